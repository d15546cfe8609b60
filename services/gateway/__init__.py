"""HTTP gateway: signals API (Redis for the live view, ClickHouse for history and stats) and a live dashboard."""
