"""The embedded stack: the real broker, warehouse and Redis as supervised child processes."""
