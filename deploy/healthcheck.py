"""Container HEALTHCHECK for every surge process in the image: probes the process that PID 1 runs.

``surge stage NAME`` -> GET /healthz on the stage's metrics port (SURGE_METRICS_BASE_PORT + stage index);
``surge gateway`` -> GET /health on SURGE_GATEWAY_PORT; ``surge jobs worker`` and ``surge notify`` -> GET /healthz
on their ports (``Settings.service_port``); anything else (``surge topics``, one-shot commands)
is healthy while it runs. Exit 0 healthy, 1 unhealthy (Docker's contract). Standard library plus surge's
settings only, so it costs one short-lived Python process per probe.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path


def target(argv: list[str]) -> str | None:
    from streams.runtime.settings import STAGES, Settings

    settings = Settings()
    args = [a for a in argv if not a.startswith("-")]
    if "stage" in args and args.index("stage") + 1 < len(args):
        name = args[args.index("stage") + 1]
        if name in STAGES:
            return f"http://127.0.0.1:{settings.stage_port(name)}/healthz"
    if "gateway" in args:
        return f"http://127.0.0.1:{settings.gateway_port}/health"
    if "jobs" in args and "worker" in args:
        return f"http://127.0.0.1:{settings.service_port('jobs')}/healthz"
    if "notify" in args:
        return f"http://127.0.0.1:{settings.service_port('notify')}/healthz"
    return None


def main() -> int:
    argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    url = target(sys.argv[1:] or argv)
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # a fixed loopback URL
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
