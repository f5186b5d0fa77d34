"""Submit and query throughput and latency on loopback, against a bare FastAPI endpoint.

    python bench/api_bench.py [--seconds 5] [--rounds 3] [--concurrency 16] [--generators httpx,wrk]

Starts `stillmotion serve --workers 0` twice (API only: rendering would compete for the same
cores), with billing off and with billing on (all submits holding on one account), and a bare
FastAPI app that returns the same JSON without doing anything, both as uvicorn
subprocesses pinned to one core, then drives each with the same load generators on the other
core: httpx in this process, and `wrk` when installed. Each round measures bare and
stillmotion back to back; it prints the medians of requests/s, p50 and p99 latency, and the
median of the rounds' ratios. Targets: submit >= 0.5x bare, query >= 0.7x bare; with billing
on, submit >= 0.5x bare and >= 0.8x billing off.
It only prints; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SUBMIT_BODY: dict[str, Any] = {
    "model": "wan2.6-i2v-flash",
    "input": {
        "prompt": "A cat walks through the garden, the camera pushes in.",
        "img_url": "https://example.com/frames/cat.png",
    },
    "parameters": {"resolution": "720P", "duration": 5, "prompt_extend": True, "audio": True},
}
TASK_BODY: dict[str, Any] = {
    "request_id": "r",
    "output": {
        "task_id": "t",
        "task_status": "PENDING",
        "submit_time": "2026-11-24 10:00:00.000",
        "orig_prompt": SUBMIT_BODY["input"]["prompt"],
    },
}


def bare_app() -> Any:
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # as ours

    @app.post("/task/bailian/image2video")
    async def submit(request: Request) -> JSONResponse:
        json.loads(await request.body())
        tid = str(uuid.uuid4())
        return JSONResponse(
            {"request_id": tid, "output": {"task_id": tid, "task_status": "PENDING"}}
        )

    @app.get("/task/{task_id}")
    async def query(task_id: str) -> JSONResponse:
        return JSONResponse({**TASK_BODY, "output": {**TASK_BODY["output"], "task_id": task_id}})

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


async def load(
    base: str, make: Callable[[httpx.AsyncClient], Any], seconds: float, concurrency: int
) -> tuple[float, list[float]]:
    """Run ``concurrency`` request loops for ``seconds``; returns (requests/s, latencies)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for _ in range(3):  # warm-up
            await make(client)
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                resp = await make(client)
                latencies.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    raise SystemExit(f"unexpected {resp.status_code}: {resp.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(
    base: str, headers: dict[str, str], task_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    def submit(c: httpx.AsyncClient) -> Any:
        return c.post("/task/bailian/image2video", json=SUBMIT_BODY, headers=headers)

    def query(c: httpx.AsyncClient) -> Any:
        return c.get(f"/task/{task_id}", headers=headers)

    out = {}
    for name, fn in (("submit", submit), ("query", query)):
        rps, lat = await load(base, fn, args.seconds, args.concurrency)
        out[name] = (rps, pct(lat, 0.5), pct(lat, 0.99))
    return out


def pin_server() -> None:
    """Servers run on the last core and the load generator on the others, so the two do not
    fight over one core and the bare and stillmotion runs see the same conditions."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[-1]})


def pin_client() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, set(cores[:-1]))


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "stillmotion", *args], env=env, capture_output=True, check=True
    )
    return out.stdout.decode().strip()


def start_stillmotion(
    data_dir: str, port: int, billing: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """`stillmotion serve --workers 0` and a key. With ``billing``: billing on, and the key's
    account funded for far more than the run submits, so every submit takes a hold on that
    one account (the contended case: each group commit locks its row)."""
    env = {
        **os.environ,
        "STILLMOTION_DATA_DIR": data_dir,
        "STILLMOTION_PORT": str(port),
        "STILLMOTION_WORKERS": "0",
        "STILLMOTION_LOG_LEVEL": "warning",
        "STILLMOTION_BILLING": "on" if billing else "off",
    }
    os.makedirs(data_dir, exist_ok=True)
    account = ["--account", _cli(env, "accounts", "create", "--name", "bench",
                                 "--balance", "1000000000")] if billing else []  # fmt: skip
    key = _cli(env, "keys", "create", "--name", "bench", *account)
    proc = subprocess.Popen([sys.executable, "-m", "stillmotion", "serve"], env=env,
                            preexec_fn=pin_server)  # fmt: skip
    return proc, key


WRK_POST = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
"""


def measure_wrk(
    base: str, headers: dict[str, str], task_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The same two runs with wrk (C, one thread): it saturates the server, not itself."""
    out: dict[str, Any] = {}
    flags = [f"-H{k}: {v}" for k, v in headers.items()]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_POST % json.dumps(SUBMIT_BODY))
    runs = {
        "submit": ["-s", script.name, base + "/task/bailian/image2video"],
        "query": [base + f"/task/{task_id}"],
    }
    try:
        for name, target in runs.items():
            cmd = ["wrk", "-t1", f"-c{args.concurrency}", f"-d{args.seconds:.0f}s", "--latency"]
            text = subprocess.run(
                cmd + flags + target, capture_output=True, text=True, check=True
            ).stdout
            out[name] = _parse_wrk(text)
    finally:
        os.unlink(script.name)
    return out


def _parse_wrk(text: str) -> tuple[float, float, float]:
    def ms(value: str) -> float:
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * scale
        return float(value)

    rps = float(text.split("Requests/sec:")[1].split()[0])
    p50 = ms(text.split(" 50%")[1].split()[0])
    p99 = ms(text.split(" 99%")[1].split()[0])
    return rps, p50, p99


SERVERS = ("bare", "stillmotion", "billing")


def run_all(args: argparse.Namespace, generators: list[str]) -> dict[str, list[Any]]:
    """The three servers run side by side (on the same core): the bare app, stillmotion with
    billing off and with billing on. Each round measures them back to back, so a change in the
    shared machine's speed hits all alike."""
    results: dict[str, list[Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bare_port = free_port()
        bare = subprocess.Popen(
            [sys.executable, __file__, "--bare-server", str(bare_port)], preexec_fn=pin_server
        )
        procs = [bare]
        targets: dict[str, tuple[str, dict[str, str], str]] = {}
        try:
            for name in SERVERS[1:]:
                port = free_port()
                proc, key = start_stillmotion(f"{tmp}/{name}", port, billing=name == "billing")
                procs.append(proc)
                targets[name] = (f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}, "")
            wait_up(f"http://127.0.0.1:{bare_port}", bare)
            targets["bare"] = (f"http://127.0.0.1:{bare_port}", {}, "t")
            for name in SERVERS[1:]:
                base, headers, _ = targets[name]
                wait_up(base, procs[SERVERS.index(name)])
                task_id = httpx.post(
                    base + "/task/bailian/image2video", json=SUBMIT_BODY, headers=headers
                ).json()["output"]["task_id"]
                targets[name] = (base, headers, task_id)
            for _ in range(args.rounds):
                for gen in generators:
                    for name in SERVERS:
                        results.setdefault(f"{gen}/{name}", []).append(
                            run_generator(gen, *targets[name], args)
                        )
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    return results


def run_generator(
    gen: str, base: str, headers: dict[str, str], task_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    if gen == "wrk":
        return measure_wrk(base, headers, task_id, args)
    return asyncio.run(measure(base, headers, task_id, args))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument(
        "--generators", default="httpx,wrk", help="load generators to run (comma-separated)"
    )
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        import uvicorn

        uvicorn.run(
            bare_app(),
            host="127.0.0.1",
            port=args.bare_server,
            log_level="warning",
            access_log=False,
        )
        return
    pin_client()
    wanted = args.generators.split(",")
    generators = [g for g in ("httpx", "wrk") if g in wanted and (g != "wrk" or shutil.which(g))]
    report(run_all(args, generators), args, generators)


#: (endpoint, server, baseline server, target ratio of their throughputs)
TARGETS = (
    ("submit", "stillmotion", "bare", 0.5),
    ("query", "stillmotion", "bare", 0.7),
    ("submit", "billing", "bare", 0.5),
    ("submit", "billing", "stillmotion", 0.8),
)


def report(results: dict[str, list[Any]], args: argparse.Namespace, generators: list[str]) -> None:
    print(
        f"loopback, {args.concurrency} concurrent connections, {args.rounds} interleaved rounds "
        f"of {args.seconds:.0f} s per run, {os.cpu_count()} cores (servers pinned to one, load "
        "generator on the other); medians over the rounds. stillmotion: billing off; billing: "
        "billing on, every submit a hold on one account"
    )
    if "wrk" not in generators:
        print("(wrk not found: only the Python load generator ran; apt-get install wrk)")
    print(
        f"{'load gen':<8} {'endpoint':<8} {'server':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    )
    for gen in generators:
        for what in ("submit", "query"):
            for server in SERVERS:
                runs = [r[what] for r in results[f"{gen}/{server}"]]
                rps, p50, p99 = (statistics.median(col) for col in zip(*runs, strict=True))
                print(f"{gen:<8} {what:<8} {server:<12} {rps:8.0f} {p50:8.2f} {p99:8.2f}")
    for gen in generators:
        for what, server, base, target in TARGETS:
            pairs = zip(results[f"{gen}/{server}"], results[f"{gen}/{base}"], strict=True)
            ratios = [ours[what][0] / theirs[what][0] for ours, theirs in pairs]
            ratio = statistics.median(ratios)
            verdict = "PASS" if ratio >= target else "FAIL"
            rounds = " ".join(f"{r:.2f}" for r in ratios)
            print(
                f"{gen}: {what} throughput ratio {server}/{base}: {ratio:.2f} "
                f"(target >= {target}) {verdict}   [rounds: {rounds}]"
            )


if __name__ == "__main__":
    main()
