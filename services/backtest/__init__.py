"""The backtest engine (``surge backtest``): recorded data through the live pipeline's own cores (features batch
driver, infer core, decision core, the outcomes stage's risk state machine), orders through a matching engine with
latency on a timing wheel; metrics, a report and a row in ClickHouse ``backtest_runs``.

* ``engine``: the wiring of the cores and the event loops (bars and ticks);
* ``matching``: book walking, price-time queue of resting limits, the bar fill model, the three modes;
* ``wheel``: the timing wheel and latency distributions;
* ``metrics`` / ``report`` / ``store``: numbers, files, ClickHouse.
"""
