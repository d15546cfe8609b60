"""Request dependencies: settings, the warehouse and Redis, opened lazily once per app and closed on shutdown."""

from __future__ import annotations

import threading
from typing import Annotated

import redis
from fastapi import Depends, Request

from streams.runtime.settings import Settings
from streams.storage.cache import HotCache, L1Cache, open_redis
from streams.storage.warehouse import Warehouse, WarehouseUnavailable, open_warehouse_from


class Resources:
    """The app's clients. Opened on first use, so creating the app (and importing it) touches no network."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._warehouse: Warehouse | None = None
        self._redis: redis.Redis | None = None
        self._hot: HotCache | None = None
        # Hot Redis keys (latest per instrument, token lookups) are served from here for cache_l1_ttl_ms.
        self.l1 = L1Cache(settings.cache_l1_ttl_ms)

    def warehouse(self) -> Warehouse:
        with self._lock:
            if self._warehouse is None:
                try:
                    self._warehouse = open_warehouse_from(self.settings)
                except Exception as exc:  # a warehouse that cannot be opened, for whatever reason, is down to us
                    raise WarehouseUnavailable(f"cannot open warehouse: {exc}") from exc
            return self._warehouse

    def redis(self) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                # Fails fast: a dead Redis must fail /health quickly, not hang a worker thread in retries.
                try:
                    self._redis = open_redis(self.settings.redis_connection_url())
                except Exception as exc:  # an unusable URL (nothing is connected yet): down to us, too
                    raise redis.ConnectionError(f"cannot open redis: {exc}") from exc
            return self._redis

    def hot(self) -> HotCache:
        client = self.redis()
        with self._lock:
            if self._hot is None or self._hot.client is not client:
                self._hot = HotCache(client, ttl_s=self.settings.cache_ttl_s, l1=self.l1)
            return self._hot

    def close(self) -> None:
        with self._lock:
            self._hot = None
            if self._warehouse is not None:
                self._warehouse.close()
                self._warehouse = None
            if self._redis is not None:
                self._redis.close()
                self._redis = None


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


def get_warehouse(resources: ResourcesDep) -> Warehouse:
    return resources.warehouse()


def get_redis(resources: ResourcesDep) -> redis.Redis:
    return resources.redis()


def get_hot(resources: ResourcesDep) -> HotCache:
    return resources.hot()


SettingsDep = Annotated[Settings, Depends(get_settings)]
HotDep = Annotated[HotCache, Depends(get_hot)]
WarehouseDep = Annotated[Warehouse, Depends(get_warehouse)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
