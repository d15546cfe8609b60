"""Offline training: builds model artifacts (``models/default``) from the simulator and the features core."""
