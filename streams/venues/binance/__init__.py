"""Binance spot and USD-M futures.

* ``spec``: the declarative venue specs (streams and routed paths, REST paths incl. ping, weights, limits).
* ``codec``: Binance JSON -> normalised events, one parser per frame kind, each quoting a captured payload.
* ``rest``: the REST client under a rolling weight budget (snapshots, exchangeInfo, ticker/24hr, trades).
* ``ws``: combined-stream connections with pings, backoff and the proactive 24 h rollover.
* ``feed``: the live feed: connections + REST -> the ingest core -> the source runner.

Nothing is imported here, so that ``import streams.venues.binance.codec`` loads no network module.
"""
