"""Sink stage: signals.v1, outcomes.v1 and dlq.v1 -> the warehouse (ClickHouse/chdb) and Redis."""
