"""Crash recovery: how soon interrupted tasks run again after `kill -9` of `serve` and a restart.

    python bench/recovery_bench.py [--cycles 5] [--workers 2]
    STILLMOTION_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/<fresh db> \\
        python bench/recovery_bench.py

Starts `stillmotion serve` (default 30 s leases) in a fresh data dir, submits `--workers`
long renders (1080P, 15 s), and then, each cycle: waits until every one of them is claimed
and rendering, SIGKILLs the server's whole process group (the renders with it), starts it
again, and watches the task events until every interrupted task was claimed again. Prints,
per cycle, the seconds from the restart (the new process started) and from the kill to the
last task's new claim, then the medians. Before the worker registry, the tasks waited for
their leases to expire: 23-55 s. It only prints; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from stillmotion.tasks.keys import create_key
from stillmotion.tasks.store import TaskStore
from stillmotion.testing.images import data_uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, data_dir: Path, workers: int) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "STILLMOTION_DATA_DIR": str(data_dir),
            "STILLMOTION_PORT": str(self.port),
            "STILLMOTION_WORKERS": str(workers),
            "STILLMOTION_MAX_ATTEMPTS": "100",  # the same tasks are killed every cycle
            "STILLMOTION_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        cmd = [sys.executable, "-m", "stillmotion", "serve"]
        self.proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        async with httpx.AsyncClient() as client:
            for _ in range(1200):
                try:
                    if (await client.get(self.base + "/healthz", timeout=1)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("serve did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


async def _claims(store: TaskStore, ids: list[str]) -> int:
    count = 0
    for task_id in ids:
        count += sum(1 for e in await store.events(task_id) if e["kind"] == "claimed")
    return count


async def _wait_claims(store: TaskStore, ids: list[str], count: int, timeout: float) -> float:
    """Wait until ``ids`` have ``count`` claims in all; the monotonic time it happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _claims(store, ids) >= count:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"not claimed again within {timeout:.0f} s")


async def _submit(svc: Service, key: str, n: int) -> list[str]:
    body = {
        "model": "wan2.6-i2v-flash",
        "input": {"prompt": "a harbour at dawn", "img_url": data_uri(1920, 1080, "JPEG")},
        "parameters": {"resolution": "1080P", "duration": 15},
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=svc.base, headers=headers, timeout=30) as client:
        return [
            (await client.post("/task/bailian/image2video", json=body)).json()["output"]["task_id"]
            for _ in range(n)
        ]


async def main(cycles: int, workers: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="recovery-bench-"))
    url = os.environ.get("STILLMOTION_DATABASE_URL") or f"sqlite:///{data_dir}/stillmotion.db"
    store = await TaskStore.open(url)
    await store.upgrade()
    key = (await create_key(store, "bench")).key
    svc = Service(data_dir, workers)
    await svc.start()
    ids = await _submit(svc, key, workers)
    print(f"database: {store.dialect}; {workers} task(s) interrupted per cycle; lease 30 s")
    since_restart, since_kill = [], []
    try:
        for cycle in range(1, cycles + 1):
            before = await _claims(store, ids)
            await _wait_claims(store, ids, before, 120)
            await asyncio.sleep(1.0)  # rendering
            killed = time.monotonic()
            svc.kill()
            restarted = time.monotonic()
            await svc.start()
            ready = time.monotonic()
            again = await _wait_claims(store, ids, before + len(ids), 120)
            since_restart.append(again - restarted)
            since_kill.append(again - killed)
            print(
                f"cycle {cycle}: RUNNING again {again - restarted:.2f} s after the restart "
                f"(server up in {ready - restarted:.2f} s), {again - killed:.2f} s after the kill"
            )
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.kill()
        await store.close()
    print(
        f"median: {statistics.median(since_restart):.2f} s after the restart, "
        f"{statistics.median(since_kill):.2f} s after the kill "
        f"(max {max(since_restart):.2f} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.workers))
