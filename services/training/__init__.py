"""Offline training: builds model artifacts (``streams/infer/artifacts/``) from the simulator and the features core."""
