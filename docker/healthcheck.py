"""Health check of the medhall images: exit 0 when a URL answers 2xx, 1 otherwise.

    python docker/healthcheck.py URL [--timeout S]   # e.g. http://prefect-server:4200/api/health
    python docker/healthcheck.py --from-file         # the image's HEALTHCHECK (see below)

``--from-file`` reads the URL from ``$MEDHALL_HEALTH_FILE`` (default
``/tmp/medhall-health-url``), which ``docker/worker.sh`` writes when it starts: a worker
container is healthy only while its Prefect worker's health server (``prefect worker start
--with-healthcheck``) answers. A container with no such file runs a one-shot ``medhall``
command, which has nothing to serve: it counts as healthy. Standard library only, so that it
runs in any image with a Python (curl is not in the slim images).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_FILE = "/tmp/medhall-health-url"


def check(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """(healthy, reason)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http only)
            return 200 <= resp.status < 300, f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str]) -> int:
    timeout = 5.0
    if "--timeout" in argv:
        i = argv.index("--timeout")
        timeout = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    if argv == ["--from-file"]:
        path = os.environ.get("MEDHALL_HEALTH_FILE", DEFAULT_FILE)
        try:
            with open(path, encoding="utf-8") as fh:
                url = fh.read().strip()
        except FileNotFoundError:
            return 0  # not a worker: a one-shot command is healthy while it runs
    elif len(argv) == 1 and not argv[0].startswith("-"):
        url = argv[0]
    else:
        print("usage: healthcheck.py URL [--timeout S] | --from-file", file=sys.stderr)
        return 2
    ok, reason = check(url, timeout)
    if not ok:
        print(f"unhealthy: {reason}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
