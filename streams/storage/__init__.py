"""Storage clients shared by the stages and the services: the warehouse (ClickHouse / chdb) and its DDL,
the model registry's records, and the Redis cache. This layer imports only ``schemas`` and ``streams.runtime``;
stages and services import it, never the other way round."""
