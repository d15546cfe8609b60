"""Offline training: one pipeline (``train.py``) from labelled bars to an infer-stage model artifact, fed by kline
files (``surge train``) or by the simulator (``default_model``: the shipped
``streams/infer/artifacts/simulator``, for tests)."""
