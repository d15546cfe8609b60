"""Bulk export of stored signals, streamed page by page from the warehouse (JSON lines, CSV, Parquet or
length-delimited protobuf ``surge.v1.Signal`` messages, as on ``signals.v1``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from schemas import SCHEMA_VERSION, common_pb2, prediction_pb2, signal_pb2
from services.gateway import pagination
from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS
from services.gateway.routers.signals import SymbolQ, _finite, norm_symbol
from streams.sink.core import SIGNAL_COLUMNS
from streams.storage.warehouse import Warehouse

router = APIRouter(prefix="/export", tags=["export"])

PAGE: Final = 10_000
COLUMNS: Final = (*SIGNAL_COLUMNS, "latency_ms")
MEDIA: Final = {"jsonl": "application/x-ndjson", "csv": "text/csv", "parquet": "application/vnd.apache.parquet",
                "protobuf": "application/x-protobuf"}


def pages(warehouse: Warehouse, symbol: str | None, since: int | None, until: int | None,
          limit: int) -> Iterator[list[dict[str, Any]]]:
    """Oldest first, ``PAGE`` rows per query, keyset on (decision_us, signal_id)."""
    after: tuple[int, str] | None = None
    left = limit
    while left > 0:
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": min(PAGE, left)}
        if symbol:
            clauses.append("symbol = {symbol:String}")
            params["symbol"] = symbol
        pagination.keyset("decision_us", "signal_id", None, since, until, clauses, params)
        if after is not None:
            clauses.append("(decision_us, signal_id) > ({after_us:Int64}, {after_id:String})")
            params["after_us"], params["after_id"] = after
        rows = warehouse.query(
            f"SELECT {', '.join(COLUMNS)} FROM {warehouse.database}.signals FINAL{pagination.where(clauses)} "
            "ORDER BY decision_us, signal_id LIMIT {limit:UInt32}", params)
        if not rows:
            return
        yield [{k: _finite(v) for k, v in r.items()} for r in rows]
        left -= len(rows)
        if len(rows) < params["limit"]:
            return
        after = (int(rows[-1]["decision_us"]), str(rows[-1]["signal_id"]))


def _jsonl(source: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    for page in source:
        yield b"".join(orjson.dumps(r) + b"\n" for r in page)


def _csv(source: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    yield buf.getvalue().encode()
    for page in source:
        buf.seek(0)
        buf.truncate()
        for row in page:
            writer.writerow({k: ("|".join(v) if isinstance(v, list) else v) for k, v in row.items()})
        yield buf.getvalue().encode()


def _parquet(source: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    writer: Any = None
    schema: Any = None
    for page in source:
        table = pa.Table.from_pylist(page, schema=schema)
        if writer is None:
            schema = table.schema
            writer = pq.ParquetWriter(sink, schema, compression="zstd")
        writer.write_table(table)
        yield sink.getvalue()
        sink.seek(0)
        sink.truncate()
    if writer is None:  # no rows: an empty file with the columns
        schema = pa.schema([(c, pa.string()) for c in COLUMNS])
        writer = pq.ParquetWriter(sink, schema)
    writer.close()
    yield sink.getvalue()


def _enum(wrapper: Any, name: Any) -> int:
    try:
        return int(wrapper.Value(str(name)))
    except ValueError:  # a stored unknown value keeps its digits (the sink's enum_name)
        return int(name) if str(name).isdigit() else 0


def signal_message(row: dict[str, Any]) -> signal_pb2.Signal:
    """The stored row as the ``signals.v1`` message it came from (minus fields the table does not keep)."""
    features = orjson.loads(row["top_features"]) if row["top_features"] else []
    return signal_pb2.Signal(
        schema_version=SCHEMA_VERSION, signal_id=row["signal_id"], venue=_enum(common_pb2.Venue, row["venue"]),  # type: ignore[arg-type]
        symbol=row["symbol"], decision=_enum(signal_pb2.Decision, row["decision"]),  # type: ignore[arg-type]
        tier=_enum(signal_pb2.Tier, row["tier"]), p_up=row["p_up"] or 0.0,  # type: ignore[arg-type]
        horizon_min=row["horizon_min"], expected_return_bps=row["expected_return_bps"] or 0.0,
        estimated_cost_bps=row["estimated_cost_bps"] or 0.0, net_utility_bps=row["net_utility_bps"] or 0.0,
        regime=row["regime"], top_features=[prediction_pb2.FeatureContribution(
            name=f["name"], value=f.get("value") or 0.0, contribution=f.get("contribution") or 0.0) for f in features],
        model_version=row["model_version"], feature_version=row["feature_version"],
        cost_model_version=row["cost_model_version"], data_window_id=row["data_window_id"],
        quality_flags=[_enum(common_pb2.QualityFlag, q) for q in row["quality_flags"]],  # type: ignore[misc]
        ts=common_pb2.Timestamps(exchange_us=row["exchange_us"], ingest_us=row["ingest_us"],
                                 infer_us=row["infer_us"], decision_us=row["decision_us"]),
        cooldown_until_us=row["cooldown_until_us"], price=row["price"] or 0.0)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _protobuf(source: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    """Each message prefixed by its length as a varint (``writeDelimitedTo`` / ``parseDelimitedFrom``)."""
    for page in source:
        chunks = []
        for row in page:
            data = signal_message(row).SerializeToString()
            chunks.append(_varint(len(data)) + data)
        yield b"".join(chunks)


@router.get("/signals", responses={200: {"content": {m: {} for m in MEDIA.values()},
                                         "description": "the signals, streamed"}, **WAREHOUSE_ERRORS})
def export_signals(
    warehouse: WarehouseDep,
    format: Annotated[Literal["jsonl", "csv", "parquet", "protobuf"],
                      Query(description="jsonl, csv, parquet or protobuf (varint-length-delimited Signal)")] = "jsonl",
    symbol: SymbolQ = None,
    since: pagination.SinceQ = None,
    until: pagination.UntilQ = None,
    limit: Annotated[int, Query(ge=1, le=10_000_000)] = 1_000_000,
) -> StreamingResponse:
    """Stored signals oldest first (one row per signal_id), streamed in pages of 10,000."""
    source = pages(warehouse, norm_symbol(symbol), since, until, limit)
    first = next(source, [])  # the first page runs now, so a warehouse outage is a 503, not a broken stream

    def chained() -> Iterator[list[dict[str, Any]]]:
        if first:
            yield first
        yield from source

    body = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "protobuf": _protobuf}[format](chained())
    return StreamingResponse(body, media_type=MEDIA[format],
                             headers={"Content-Disposition": f'attachment; filename="signals.{format}"'})
