"""Command groups of the `surge` CLI, one module per domain; each exposes ``register(app)``."""
