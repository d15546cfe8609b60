"""Shared stage runtime: settings, clock, topics, codecs, the consume-process-produce runner, metrics."""
