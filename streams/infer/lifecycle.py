"""The infer stage's model lifecycle: which models to serve, from the registry, changed without a restart.

* Start: the registry (ClickHouse ``model_versions``) is asked for the active model; on a fresh install
  ``ensure_default`` first registers and activates the bootstrap artifact (``SURGE_MODEL_DIR`` or the shipped
  ``streams/infer/artifacts/btcusdt-klines``, package data), so predictions are real from the first vector. If the
  registry cannot be reached, or the active artifact cannot be loaded, the bootstrap artifact is served and the
  watcher keeps trying.
* Every ``poll_s`` a daemon thread re-reads the registry. A new active or canary version is loaded in that
  thread (the session build never stalls a batch) and swapped in atomically between batches.
* Automatic canary withdrawals decided by ``process`` are written to the registry (``rollback_canary``,
  audited) by the same thread, retried until the warehouse takes them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.infer.canary import CanaryPolicy
from streams.infer.core import InferState, Serving
from streams.infer.metrics import InferMetrics
from streams.infer.model import Model, ModelError, load_model
from streams.storage.registry import ModelRecord, ModelRegistry, RegistryError

AUTO_ACTOR = "infer-auto"
BOOTSTRAP_ACTOR = "infer-bootstrap"

RegistryFactory = Callable[[], ModelRegistry]
Loader = Callable[[Path], Model]


@dataclass(frozen=True, slots=True)
class _Rollback:
    canary_id: str
    version: str
    reason: str


def warn_feature_version(model: Model, log: logging.Logger) -> None:
    """Say loudly when the served model cannot take what this build's features stage emits."""
    from streams.features.definitions import FEATURE_VERSION

    if model.feature_version != FEATURE_VERSION:
        log.error("model %s expects feature_version %s but this build's features stage emits %s: its vectors "
                  "will be dead-lettered as feature_version_mismatch until a matching model is deployed",
                  model.model_version, model.feature_version, FEATURE_VERSION)


def canary_identity(rec: ModelRecord) -> str:
    """A canary deployment: the same version deployed again later is a new trial with a new symbol sample."""
    return f"{rec.model_version}@{rec.deployed_at_us}"


class RegistryWatcher:
    def __init__(
        self,
        registry_factory: RegistryFactory,
        bootstrap_dir: Path,
        *,
        poll_s: float = 2.0,
        canary_share: float = 0.1,
        policy: CanaryPolicy | None = None,
        metrics: InferMetrics | None = None,
        loader: Loader = load_model,
        log: logging.Logger | None = None,
    ) -> None:
        self.registry_factory = registry_factory
        self.bootstrap_dir = bootstrap_dir
        self.poll_s = poll_s
        self.canary_share = canary_share
        self.policy = policy or CanaryPolicy()
        self.metrics = metrics or InferMetrics.create()
        self.loader = loader
        self.log = log or logging.getLogger("surge.infer.lifecycle")
        self.state: InferState | None = None
        self._registry: ModelRegistry | None = None
        self._pending: deque[_Rollback] = deque()
        self._failed: dict[str, int] = {}  # version -> updated_us of the record that failed to load
        self._cache: dict[str, Model] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bootstrapped = False
        self._warned_unreachable = False

    # --- start-up ------------------------------------------------------------------------------------------

    def initial_state(self) -> InferState:
        """The state to start with: the registry's models when reachable, else the bootstrap artifact."""
        fallback = self.loader(self.bootstrap_dir)
        self._cache[fallback.model_version] = fallback
        self.state = InferState(fallback, policy=self.policy, metrics=self.metrics,
                                on_canary_failure=self.request_canary_rollback)
        if self.poll_once():
            self.log.info("serving %s from the registry", self.state.model.model_version)
            if self.state.model is fallback:  # apply() warns on changes only
                warn_feature_version(fallback, self.log)
        else:
            self.log.warning("registry unavailable: serving the bootstrap model %s from %s until it answers",
                             fallback.model_version, self.bootstrap_dir)
        return self.state

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="infer-registry-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any surprise; the stage keeps serving what it has
                self.log.exception("registry poll failed")

    # --- canary withdrawals --------------------------------------------------------------------------------

    def request_canary_rollback(self, canary_id: str, version: str, reason: str) -> None:
        """Called by ``process`` (stage thread) when the guard withdraws a canary."""
        self.log.warning("canary %s withdrawn: %s", version, reason)
        self._pending.append(_Rollback(canary_id, version, reason))

    def _flush_rollbacks(self, reg: ModelRegistry) -> None:
        while self._pending:
            job = self._pending[0]
            current = reg.canary()
            if current is not None and canary_identity(current) == job.canary_id:
                try:
                    reg.rollback_canary(AUTO_ACTOR, job.reason)
                    self.log.warning("registry: canary %s rolled back (audited)", job.version)
                except RegistryError as exc:  # someone else withdrew it in between
                    self.log.info("canary %s already withdrawn: %s", job.version, exc)
            self._pending.popleft()

    # --- polling -------------------------------------------------------------------------------------------

    def _open(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = self.registry_factory()
        return self._registry

    def poll_once(self) -> bool:
        """One look at the registry; True when it answered. Never raises for registry or artifact trouble."""
        assert self.state is not None, "initial_state() first"
        try:
            reg = self._open()
            self._flush_rollbacks(reg)
            if not self._bootstrapped:
                try:
                    reg.ensure_default(self.bootstrap_dir, actor=BOOTSTRAP_ACTOR)
                except RegistryError as exc:  # another replica activated one at the same moment
                    self.log.info("ensure_default: %s", exc)
                self._bootstrapped = True
            records = reg.versions()
        except Exception as exc:
            self._registry = None  # reconnect next time
            if not self._warned_unreachable:
                self.log.warning("model registry unreachable (%s); keeping %s", exc, self.state.model.model_version)
                self._warned_unreachable = True
            return False
        if self._warned_unreachable:
            self.log.info("model registry reachable again")
            self._warned_unreachable = False
        self.apply(records)
        return True

    def apply(self, records: list[ModelRecord]) -> bool:
        """Bring the serving set in line with registry records; True if it changed."""
        assert self.state is not None
        current = self.state.serving
        active_rec = next((r for r in records if r.is_active), None)
        canary_rec = next((r for r in records if r.is_canary), None)
        active = current.active
        if active_rec is not None and active_rec.model_version != active.model_version:
            active = self._load(active_rec) or active
        canary: Model | None = None
        canary_id = ""
        if (canary_rec is not None and canary_rec.model_version != active.model_version
                and canary_identity(canary_rec) not in self.state.withdrawn):
            canary_id = canary_identity(canary_rec)
            if current.canary is not None and current.canary_id == canary_id:
                canary = current.canary
            else:
                canary = self._load(canary_rec)
            if canary is None:
                canary_id = ""
        wanted = Serving(active, canary, self.canary_share if canary is not None else 0.0, canary_id)
        changed = self.state.swap(wanted)
        if changed:
            self.log.info("serving active %s%s", active.model_version,
                          f", canary {canary.model_version} on {self.canary_share:.0%} of symbols" if canary else "")
            if active.feature_version != current.active.feature_version:
                self.log.warning("feature_version changed %s -> %s: vectors of the old version are now refused",
                                 current.active.feature_version, active.feature_version)
            warn_feature_version(active, self.log)
        self._cache = {m.model_version: m for m in (active, canary) if m is not None}
        return changed

    def _load(self, rec: ModelRecord) -> Model | None:
        cached = self._cache.get(rec.model_version)
        if cached is not None:
            return cached
        if self._failed.get(rec.model_version) == rec.updated_us:
            return None  # failed before and nothing changed since: do not retry every poll
        try:
            model = self.loader(Path(rec.artifact_path))
        except (ModelError, OSError, KeyError, ValueError) as exc:
            self._failed[rec.model_version] = rec.updated_us
            self.metrics.reloads.labels("failed").inc()
            self.log.error("cannot load %s from %s: %s; keeping what is served", rec.model_version,
                           rec.artifact_path, exc)
            return None
        if model.model_version != rec.model_version:
            self._failed[rec.model_version] = rec.updated_us
            self.metrics.reloads.labels("failed").inc()
            self.log.error("artifact %s holds %s, registry says %s; not served", rec.artifact_path,
                           model.model_version, rec.model_version)
            return None
        self.metrics.reloads.labels("ok").inc()
        return model
