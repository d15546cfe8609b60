"""Outcomes stage: follows every LONG/SHORT signal on the tick stream to its triple-barrier result."""
