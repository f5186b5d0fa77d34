"""Is a registered worker dead? Its process is gone from this machine, or its heartbeat is
older than the bound.

A pid only means something on the machine, and in the pid namespace, that issued it: the
``machine`` id is the hostname, the kernel's boot id and the pid namespace, so a worker in
another container or on another host is judged by its heartbeat alone. A reused pid is told
apart by the process start time recorded at registration (``/proc/<pid>/stat``, in clock
ticks since boot; without ``/proc`` only the pid's existence is checked).
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path

from stillmotion import __version__
from stillmotion.tasks.workers import WorkerRow

STALE_BEATS = 3  # a worker whose heartbeat is this many intervals old is dead


@cache
def machine_id() -> str:
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        ns = os.stat("/proc/self/ns/pid")
        parts.append(f"{ns.st_dev}:{ns.st_ino}")
    except OSError:
        pass
    return "|".join(parts)[:255]


def process_start(pid: int) -> float | None:
    """When ``pid`` started (clock ticks since boot), or ``None`` if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after it
        return float(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def this_worker(worker_id: str, engines: list[str], now: float) -> WorkerRow:
    pid = os.getpid()
    return WorkerRow(
        id=worker_id, host=socket.gethostname()[:255], machine=machine_id(), pid=pid,
        process_start=process_start(pid), engines=sorted(engines), version=__version__,
        started_at=now, heartbeat_at=now,
    )  # fmt: skip


def why_dead(row: WorkerRow, now: float, heartbeat_seconds: float) -> str | None:
    """Why ``row``'s worker is known dead (its process is gone, or its heartbeat is stale);
    ``None`` while it may be alive."""
    if row.machine == machine_id():
        if not pid_alive(row.pid):
            return f"process {row.pid} is gone"
        started = process_start(row.pid)
        if row.process_start is not None and started is not None and started != row.process_start:
            return f"process {row.pid} is gone (pid reused)"
    age = now - row.heartbeat_at
    if age > STALE_BEATS * heartbeat_seconds:
        return f"heartbeat {age:.0f} s old"
    return None
