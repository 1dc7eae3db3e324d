"""Names of temporary files and folders that say who made them, so leftovers can be swept.

Every temporary path medhall writes under its home carries an owner tag ``<pid>@<host>``
(:func:`owner_tag`, the host as 8 hex digits of its name's hash): a store version being written
(``.tmp-<tag>-<hex>/``), an atomic write (``.<name>.<tag>.<hex>.tmp``), an export's DuckDB
folder (``.medhall-export-<tag>-*``), a sort spill (``.medhall-sort-<tag>-*``), a catalog
being built (``.catalog.duckdb.*``), a version being deleted (``.gc-<tag>-<hex>``).

:func:`is_leftover` says whether such a path may be removed: its owner is a process of this host
that is no longer running, or (another host's, or a name without a tag, as older versions
wrote) it has not been touched for :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from functools import lru_cache

STALE_AFTER_S = 6 * 3600.0
#: temporary names medhall writes (anchored at the start of a file or folder name)
TEMP_NAME = re.compile(
    r"""^(?:
        \.tmp-.*                       # a store version being written
      | \..+\.tmp                      # an atomic file write
      | \.medhall-(?:export|sort)-.*   # export work folders
      | \.catalog\.duckdb\..*          # a catalog being built
      | \.gc-.*                        # a version being deleted
    )$""",
    re.X,
)
_TAG = re.compile(r"(\d+)@([0-9a-f]{8})")


@lru_cache(maxsize=1)
def host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``<pid>@<host>`` of this process (computed each call: a forked child has its own pid)."""
    return f"{os.getpid()}@{host_id()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_temp_name(name: str) -> bool:
    return bool(TEMP_NAME.match(name))


def is_leftover(name: str, mtime: float, *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether a temporary path called ``name`` (last modified at ``mtime``) may be removed."""
    if not is_temp_name(name):
        return False
    tag = _TAG.search(name)
    if tag is not None and tag.group(2) == host_id():
        return not pid_alive(int(tag.group(1)))
    return ((now if now is not None else time.time()) - mtime) > stale_after_s


__all__ = ["STALE_AFTER_S", "TEMP_NAME", "host_id", "is_leftover", "is_temp_name", "owner_tag", "pid_alive"]
