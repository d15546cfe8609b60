"""The warehouse service: the process that owns the embedded chdb folder and serves it over HTTP
(``server.py``). The client API every process uses lives in ``streams.storage.warehouse``."""
