"""Test doubles that run as real services: ``fake_exchange``, a loopback Binance (``surge fake-exchange``).

Used by the test suite, the benchmarks and demos; never by the pipeline itself (``streams`` imports no
``services``).
"""
