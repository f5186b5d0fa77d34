"""1000 relay tasks in flight against a fake upstream, through the real service.

    python bench/relay_bench.py [--engine dashscope|openai-videos] [--tasks 1000]
                                [--running 60] [--poll-max 15]

Starts the engine's fake (`stillmotion fake-dashscope`, or `stillmotion fake-videos` for
`openai-videos`) as a subprocess (its CPU is not ours), opens a stillmotion runtime (SQLite,
the real worker and the engine) in this process, submits the tasks through TaskService, and
waits until every one is SUCCEEDED with its MP4 in our storage. The fake keeps each task
PENDING (queued) 1 s, RUNNING (in_progress) `--running` s, then SUCCEEDED (completed).

Prints: the poll cycle (1000 tasks all due at once, through the relay's client, pool and
rate limiter), the refresh period each task actually got (gap between its polls), the delay
from upstream SUCCEEDED to ours (p50/p99), and this process's CPU time per task; then the
same figures for serial polling with a 1 s gap between tasks (new-api's video poller). It
only prints; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from stillmotion import catalog
from stillmotion.config import Settings
from stillmotion.engines.dashscope.client import UpstreamClient
from stillmotion.engines.openai_videos.client import VideosClient
from stillmotion.engines.relay.engine import RelayEngine
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.rows import ApiKeyRow
from stillmotion.testing.images import data_uri

KEY = "sk-bench"
VIDEOS = "openai-videos"
POLLS: list[tuple[str, float, float]] = []  # (upstream id, start, end), monotonic
BODY: dict[str, Any] = {
    "model": "wan2.6-i2v-flash",
    "input": {"prompt": "bench", "img_url": "https://example.com/frame.png"},
    "parameters": {"resolution": "720P", "duration": 2},
}
#: openai-videos takes media (the worker fetches the frame): an inline one, and no audio to mux
VIDEOS_BODY: dict[str, Any] = {
    "model": "wan2.6-i2v-flash",
    "input": {"prompt": "bench", "img_url": data_uri(480, 320, "JPEG")},
    "parameters": {"resolution": "720P", "duration": 2, "audio": False},
}


def _instrument() -> None:
    for cls in (UpstreamClient, VideosClient):
        original = cls.get

        async def timed(
            self: Any, base: str, key: str, task_id: str, original: Any = original
        ) -> dict[str, Any]:
            start = time.monotonic()
            try:
                result: dict[str, Any] = await original(self, base, key, task_id)
                return result
            finally:
                POLLS.append((task_id, start, time.monotonic()))

        cls.get = timed  # type: ignore[method-assign]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_fake(port: int, running: float, engine: str) -> subprocess.Popen[bytes]:
    videos = engine == VIDEOS
    fake, first = ("fake-videos", "--queued") if videos else ("fake-dashscope", "--pending")
    cmd = [sys.executable, "-m", "stillmotion", fake, "--port", str(port), "--key", KEY]
    cmd += [first, "1", "--running", str(running)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/_control")
            return proc
        except httpx.ConnectError:
            time.sleep(0.05)
    raise RuntimeError("the fake did not start")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _wait_done(runtime: Runtime, n: int) -> None:
    while True:
        counts = await runtime.store.counts()
        if counts["SUCCEEDED"] + counts["FAILED"] + counts["CANCELED"] >= n:
            return
        await asyncio.sleep(0.5)


async def _upstream_ends(base: str, engine: str) -> dict[str, float]:
    """Upstream task id -> when it became SUCCEEDED (epoch), from the fake's task list
    (the videos list says ``completed_at`` in whole seconds)."""
    ends: dict[str, float] = {}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
        if engine == VIDEOS:
            after: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
                body = (await http.get(f"{base}/videos", params=params)).json()
                ends.update({v["id"]: float(v["completed_at"] or 0) for v in body["data"]})
                if not body["has_more"]:
                    return ends
                after = body["last_id"]
        page = 1
        while True:
            params = {"page_no": page, "page_size": 100}
            body = (await http.get(f"{base}/tasks", params=params)).json()
            ends.update({i["task_id"]: i["end_time"] / 1000 for i in body["data"]})
            if page >= body["total_page"]:
                return ends
            page += 1


async def _burst_cycle(engine: RelayEngine, ids: list[str]) -> float:
    """Poll every task once, all due at the same moment: the relay's own cycle time
    (through its client, pool and the channel's query rate)."""
    channel = engine.admission.channels[0]
    client = engine._client()

    async def one(upstream_id: str) -> None:
        await channel.take_query()
        await client.status(channel.config.base_url, KEY, upstream_id)

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in ids))
    return time.monotonic() - start


def _gaps(since: float) -> list[float]:
    """Gaps between consecutive polls of one task, for polls after ``since``."""
    by_task: dict[str, list[float]] = {}
    for task_id, start, _ in POLLS:
        by_task.setdefault(task_id, []).append(start)
    pairs = (p for times in by_task.values() for p in zip(times, times[1:], strict=False))
    return [b - a for a, b in pairs if a >= since]


class _Count:
    """Counts calls of one TaskStore method (the database writes a relayed task costs)."""

    def __init__(self, store: Any, name: str) -> None:
        self.calls = 0
        original = getattr(store, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await original(*args, **kwargs)

        setattr(store, name, counted)


async def _heartbeat_cpu(
    runtime: Runtime, key_row: ApiKeyRow, engine: str, body: dict[str, Any], n: int = 2000
) -> float:
    """CPU seconds of one lease renewal on this store (measured on a claimed task)."""
    row = await runtime.service.submit(key_row, body)
    claimed = await runtime.store.claim("bench-claim", 60, [engine])
    assert claimed is not None and claimed.id == row.id
    cpu0 = time.process_time()
    for _ in range(n):
        await runtime.store.heartbeat(row.id, "bench-claim", 60, 0.5)
    return (time.process_time() - cpu0) / n


def _fake_cpu(pid: int) -> float:
    """utime + stime of another process, from /proc (NaN where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    name = args.engine
    fake = _start_fake(port, args.running, name)
    videos = name == VIDEOS
    base = f"http://127.0.0.1:{port}" + ("/v1" if videos else "/api/v1")
    body = VIDEOS_BODY if videos else BODY
    prefix = "openai_videos" if videos else "dashscope"
    relay = {
        f"{prefix}_base_url": base,
        f"{prefix}_api_keys": KEY,
        f"{prefix}_max_in_flight": args.tasks,
        f"{prefix}_submit_rate": args.submit_rate,
        f"{prefix}_query_rate": args.query_rate,
        f"{prefix}_poll_first": 3.0,
        f"{prefix}_poll_max": args.poll_max,
        f"{prefix}_allow_private": True,
    }
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="relay-bench-")),
        routes=",".join(f"{m}={name}" for m in catalog.model_names()),
        poll_interval=0.05,
        **relay,
    )
    runtime = await open_runtime(settings)
    try:
        key = await create_key(runtime.store, "bench")
        writes = {n: _Count(runtime.store, n) for n in ("heartbeat", "save_state", "claim")}
        worker = await runtime.start_worker()
        engine = worker.engines[name]
        assert isinstance(engine, RelayEngine)
        cpu0, loop0, t0 = time.process_time(), time.thread_time(), time.monotonic()
        for _ in range(args.tasks):
            await runtime.service.submit(key.row, body)
        submitted = time.monotonic() - t0
        await _wait_done(runtime, args.tasks)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        loop_cpu, fake_cpu = time.thread_time() - loop0, _fake_cpu(fake.pid)
        counted = {n: c.calls for n, c in writes.items()}
        listed, _ = await runtime.store.list_tasks(key.row.id, limit=args.tasks)
        rows = [row for r in listed if (row := await runtime.store.get_task(r.id)) is not None]
        ends = await _upstream_ends(base, name)
        delays = [
            r.ended_at - ends[r.engine_state["upstream_id"]]
            for r in rows
            if r.ended_at and r.status.value == "SUCCEEDED" and r.engine_state.get("upstream_id")
        ]
        failed = Counter(str(r.error_code) for r in rows if r.status.value != "SUCCEEDED")
        steady = t0 + submitted + args.poll_max  # every task is on its long interval by then
        gaps = _gaps(steady)
        latencies = [e - s for _, s, e in POLLS]
        burst = await _burst_cycle(engine, list(ends))
        await worker.stop()
        beat_cpu = await _heartbeat_cpu(runtime, key.row, name, body)
        return {
            "engine": name,
            "tasks": args.tasks,
            "succeeded": sum(1 for r in rows if r.status.value == "SUCCEEDED"),
            "failed": dict(failed),
            "submit_s": submitted,
            "wall_s": wall,
            "cpu_s": cpu,
            "loop_cpu_s": loop_cpu,
            "fake_cpu_s": fake_cpu,
            "writes": counted,
            "heartbeat_ms": 1000 * beat_cpu,
            "polls": len(latencies),
            "burst_cycle_s": burst,
            "gap_p50": _pct(gaps, 0.5),
            "gap_p99": _pct(gaps, 0.99),
            "poll_ms_p50": 1000 * _pct(latencies, 0.5),
            "poll_ms_p99": 1000 * _pct(latencies, 0.99),
            "delay_p50": _pct(delays, 0.5),
            "delay_p99": _pct(delays, 0.99),
            "delay_mean": statistics.fmean(delays) if delays else float("nan"),
        }
    finally:
        await runtime.close()
        fake.terminate()
        fake.wait(timeout=10)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    n, interval = r["tasks"], args.poll_max
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"engine: {r['engine']}")
    print(
        f"tasks: {n} ({r['succeeded']} SUCCEEDED), upstream RUNNING {args.running:g} s, "
        f"poll interval {interval:g} s"
    )
    if r["failed"]:
        print(f"not SUCCEEDED, by code: {r['failed']}")
    print(f"submitted in {r['submit_s']:.1f} s; all done after {r['wall_s']:.1f} s")
    print(
        f"poll cycle, {n} tasks due at once: {r['burst_cycle_s']:.2f} s "
        f"({n / r['burst_cycle_s']:.0f} polls/s)"
    )
    print(
        f"poll request latency: p50 {r['poll_ms_p50']:.1f} ms, p99 {r['poll_ms_p99']:.1f} ms "
        f"({r['polls']} polls)"
    )
    print(
        f"gap between polls of one task (steady state): p50 {r['gap_p50']:.1f} s, "
        f"p99 {r['gap_p99']:.1f} s"
    )
    print(
        f"upstream SUCCEEDED -> ours SUCCEEDED: p50 {r['delay_p50']:.1f} s, "
        f"p99 {r['delay_p99']:.1f} s, mean {r['delay_mean']:.1f} s"
    )
    print(f"gateway CPU: {r['cpu_s']:.1f} s for {n} tasks = {1000 * r['cpu_s'] / n:.1f} ms/task")
    print(
        f"  of which the event-loop thread {r['loop_cpu_s']:.1f} s; "
        f"the fake upstream used {r['fake_cpu_s']:.1f} s in its own process"
    )
    w = r["writes"]
    beats = w["heartbeat"] / n
    print(
        f"  database writes per task: {beats:.1f} heartbeats, {w['save_state'] / n:.1f} "
        f"state saves, {w['claim'] / n:.1f} claims; one heartbeat costs "
        f"{r['heartbeat_ms']:.2f} ms CPU, so heartbeats are ~{beats * r['heartbeat_ms']:.0f} "
        f"ms/task"
    )
    serial = n * 1.0
    print(
        f"serial 1-s-spaced polling (new-api): cycle {serial:.0f} s; "
        f"delay p50 ~{serial / 2:.0f} s, p99 ~{0.99 * serial:.0f} s"
    )
    print(
        f"speed-up of the cycle: {serial / r['burst_cycle_s']:.0f}x; "
        f"of the p50 delay: {serial / 2 / max(r['delay_p50'], 1e-9):.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["dashscope", VIDEOS], default="dashscope")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--running", type=float, default=60.0)
    parser.add_argument("--poll-max", type=float, default=15.0)
    parser.add_argument("--submit-rate", type=float, default=200.0)
    parser.add_argument("--query-rate", type=float, default=2000.0)
    args = parser.parse_args()
    _instrument()
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
