"""Decision stage: predictions.v1 -> signals.v1 (cost model, tiers, per-symbol cooldown)."""
