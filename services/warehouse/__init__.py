"""The warehouse: one ``Warehouse`` API over ClickHouse (HTTP), embedded chdb, or the chdb-owning service."""

from services.warehouse.client import (
    ClickHouseWarehouse,
    RemoteWarehouse,
    Warehouse,
    WarehouseError,
    apply_ddl,
    ddl_statements,
    open_warehouse,
)

__all__ = [
    "ClickHouseWarehouse",
    "RemoteWarehouse",
    "Warehouse",
    "WarehouseError",
    "apply_ddl",
    "ddl_statements",
    "open_warehouse",
]
