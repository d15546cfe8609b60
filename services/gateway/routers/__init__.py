"""One router per resource: health, signals, dashboard."""
