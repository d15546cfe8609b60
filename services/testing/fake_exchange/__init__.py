"""A loopback Binance for tests and demos: replays real captures over Binance's own WebSocket and REST URLs."""
