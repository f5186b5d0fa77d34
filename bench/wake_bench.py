"""Submit-to-claim latency across processes on PostgreSQL: LISTEN/NOTIFY vs polling.

    python bench/wake_bench.py [--tasks 30] [--poll 0.5] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Makes a scratch database, then two runtimes on it, as two processes would be: one submits
(API only), the other runs a worker. Each task is submitted while the worker idles, and the
time from the submit's commit to the worker's claim is read from the task's events (the
``created`` and ``claimed`` times). Once with the worker listening (the default on
PostgreSQL) and once with its listener off, so only its poll (``--poll`` seconds) finds the
work. Prints the medians and p90s and their ratio. It only prints; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
from pathlib import Path

import asyncpg
from sqlalchemy import make_url

from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key

BODY = {
    "model": "wan2.6-i2v-flash",
    "input": {"prompt": "a lighthouse", "img_url": "http://127.0.0.1:9/frame.png"},
    "parameters": {"resolution": "720P", "duration": 2},
}


async def _latencies(api: Runtime, worker: Runtime, n: int, listen: bool) -> list[float]:
    await worker.start_worker()
    if not listen and worker.listener is not None:
        await worker.listener.close()
        worker.listener = None
    elif worker.listener is not None:
        await worker.listener.connected.wait()
    key = (await create_key(api.store, "bench")).row
    out = []
    for _ in range(n):
        await asyncio.sleep(0.2)  # the worker is idle again (the fetch is refused at once)
        task = await api.service.submit(key, BODY)
        for _ in range(400):
            events = {e["kind"]: e["at"] for e in await api.store.events(task.id)}
            if "claimed" in events:
                out.append(events["claimed"] - events["created"])
                break
            await asyncio.sleep(0.005)
    return out


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    name = f"sm_bench_{secrets.token_hex(4)}"
    admin_url = make_url(args.pg).set(drivername="postgresql")
    admin = await asyncpg.connect(admin_url.render_as_string(hide_password=False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    results: dict[str, list[float]] = {}
    try:
        for mode in ("notify", "poll"):
            with tempfile.TemporaryDirectory() as tmp:
                common = dict(
                    data_dir=Path(tmp), database_url=url, allow_private_urls=True, max_attempts=1
                )  # a refused fetch fails at once, no retries
                api = await open_runtime(Settings(**common, workers=0))  # type: ignore[arg-type]
                worker = await open_runtime(
                    Settings(**common, workers=1, poll_interval=args.poll)  # type: ignore[arg-type]
                )
                try:
                    results[mode] = await _latencies(api, worker, args.tasks, mode == "notify")
                finally:
                    await worker.close()
                    await api.close()
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--poll", type=float, default=0.5, help="the worker's poll interval")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(f"submit -> claim across two runtimes on PostgreSQL, {args.tasks} tasks each, "
          f"worker poll interval {args.poll:g} s")  # fmt: skip
    for mode, values in results.items():
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
        print(f"{mode:<7} median {statistics.median(values) * 1000:7.1f} ms   "
              f"p90 {p90 * 1000:7.1f} ms   ({len(values)} claims)")  # fmt: skip
    ratio = statistics.median(results["poll"]) / statistics.median(results["notify"])
    print(f"polling / notify median latency: {ratio:.1f}x")


if __name__ == "__main__":
    main()
