"""Ingest stage: raw venue (or simulator) frames -> sequence-checked local books -> per-symbol TickBatches."""
