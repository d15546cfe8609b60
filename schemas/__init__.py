"""Protobuf schemas of every message on the surge bus, their generated Python, and the ClickHouse DDL."""

SCHEMA_VERSION = 1
