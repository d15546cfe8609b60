"""Venue adapters: one small declarative package per exchange.

Each venue package holds its ``spec`` (what the venue serves: stream names and routes, REST paths and weights,
limits), its ``codec`` (its wire format -> the normalised events of ``streams.ingest.events``), its ``rest``
client, its ``ws`` connections and its live ``feed``, which wires them to the venue-neutral ingest core. Only
the feed needs the network modules: replay, the batch driver and the loopback exchange use spec and codec alone.
"""
