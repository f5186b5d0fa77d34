"""Scale-out figures in one run: S3 storage vs the local disk, and NOTIFY vs polling.

    python bench/scale_bench.py [--rounds 3] [--seconds 4] [--concurrency 8] [--clients 4]
        [--quick] [--no-wake] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Starts moto's S3 server (``python -m moto.server``, a separate process on loopback) and makes
a bucket, then real ``stillmotion serve`` processes (SQLite, ``--workers 0``, pinned to the
last core; the load generator, httpx in this process, runs on the others), one on local file
storage and one on ``STILLMOTION_STORAGE_URL=s3://bench/svc`` with
``STILLMOTION_S3_ENDPOINT_URL`` pointing at moto, both with the same signing secret:

- **submit**: ``--concurrency`` clients post submits whose ``img_url`` is a ``data:`` URI (a
  1280x720 JPEG), which the submit decodes and writes to ``inputs/<task_id>/`` in the store;
  requests/s.
- **download**: one real task is rendered first (``--resolution``/``--duration``, the motion
  engine, local storage) and its video copied into the bucket under the same key; then
  ``--clients`` clients GET its signed ``/files/`` URL over and over (whole file), and then
  with ``Range: bytes=a-b`` of 1 MiB at random offsets; MB/s.

Each round measures local and S3 back to back (alternating which goes first), so a change in
the shared machine's speed hits both alike; it prints the medians over the rounds and the
median of the rounds' S3/local ratios against the target (>= 0.7x), and the CPU seconds the
stillmotion server and moto spent per request. Then (unless ``--no-wake``) it runs
``bench/wake_bench.py``'s measurement: submit to claim on PostgreSQL with LISTEN/NOTIFY vs
polling. It only prints; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from stillmotion.testing.images import data_uri

SUBMIT = "/task/bailian/image2video"
BUCKET = "bench"
PREFIX = "svc"
TARGET = 0.7
RANGE_BYTES = 1 << 20
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_server() -> None:
    """Servers on the last core, the load generator on the others (as bench/api_bench.py)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[-1]})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its waited-for children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def base_env() -> dict[str, str]:
    env = {**os.environ, **AWS_ENV}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)  # no install needed
    return env


class Moto:
    """moto's S3 server as its own process (not pinned: it shares the two cores)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"moto server exited with {self.proc.returncode}")
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit("moto server did not start")
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.client.create_bucket(Bucket=BUCKET)

    def put(self, key: str, path: Path) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=path.read_bytes())

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@dataclass
class Server:
    """One ``stillmotion serve`` process and a key of its own."""

    name: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""
    key: str = ""

    @classmethod
    def make(cls, name: str, root: Path, secret: str, s3: Moto | None) -> Server:
        data_dir = root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **base_env(),
            "STILLMOTION_LOG_LEVEL": "warning",
            "STILLMOTION_SIGNING_SECRET": secret,
            "STILLMOTION_BILLING": "off",
        }
        for var in ("STILLMOTION_DATABASE_URL", "STILLMOTION_STORAGE_URL", "STILLMOTION_CONFIG"):
            env.pop(var, None)
        if s3 is not None:
            env["STILLMOTION_STORAGE_URL"] = f"s3://{BUCKET}/{PREFIX}"
            env["STILLMOTION_S3_ENDPOINT_URL"] = s3.endpoint
            env["STILLMOTION_S3_REGION"] = "us-east-1"
        return cls(name, data_dir, env)

    def _cli(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "stillmotion", *args, "--data-dir", str(self.data_dir)]
        out = subprocess.run(cmd, env=self.env, capture_output=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(args)}: {out.stderr.decode()[-500:]}")
        return out.stdout.decode().strip()

    def start(self, workers: int) -> None:
        if not self.key:
            self.key = self._cli("keys", "create", "--name", "bench")
        port_file = self.data_dir / "port"
        port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "stillmotion", "serve", "--port", "0",
               "--port-file", str(port_file), "--data-dir", str(self.data_dir),
               "--workers", str(workers)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, preexec_fn=pin_server)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: serve did not start ({self.proc.returncode})")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{int(port_file.read_text())}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.proc = None


def submit_body(image: str, resolution: str, duration: int) -> dict[str, Any]:
    return {
        "model": "wan2.6-i2v-flash",
        "input": {"prompt": "A harbour at dawn, the camera slowly pushes in.", "img_url": image},
        "parameters": {"resolution": resolution, "duration": duration},
    }


def render(server: Server, resolution: str, duration: int) -> tuple[str, str, float]:
    """One real task on ``server`` (running a worker); its video's key, signed path+query and
    the seconds from submit to SUCCEEDED."""
    body = submit_body(data_uri(1920, 1080, "JPEG"), resolution, duration)
    t0 = time.monotonic()
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as client:
        task_id = client.post(SUBMIT, json=body).json()["output"]["task_id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            out = client.get(f"/task/{task_id}").json()["output"]
            if out["task_status"] == "SUCCEEDED":
                parts = urlsplit(out["video_url"])
                key = parts.path.removeprefix("/files/")
                return key, f"{parts.path}?{parts.query}", time.monotonic() - t0
            if out["task_status"] not in ("PENDING", "RUNNING"):
                raise SystemExit(f"the render task ended {out['task_status']}: {out}")
            time.sleep(0.2)
    raise SystemExit("the render did not finish in 300 s")


async def drive(
    server: Server,
    one: Callable[[httpx.AsyncClient], Awaitable[int]],
    seconds: float,
    concurrency: int,
) -> tuple[float, float, list[float]]:
    """``concurrency`` loops of ``one`` for ``seconds``: (requests/s, bytes/s, latencies)."""
    latencies: list[float] = []
    moved = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.base, headers=server.headers, limits=limits, timeout=60
    ) as client:
        for _ in range(2):  # warm-up: connections, the server's first requests
            await one(client)
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal moved
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                got = await one(client)  # (not `moved += await ...`: that loses updates)
                moved += got
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, moved / elapsed, latencies


def submitter(content: bytes) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    async def one(client: httpx.AsyncClient) -> int:
        resp = await client.post(
            SUBMIT, content=content, headers={"Content-Type": "application/json"}
        )
        if resp.status_code != 200:
            raise SystemExit(f"submit: {resp.status_code} {resp.text[:300]}")
        return len(content)

    return one


def downloader(path: str, size: int, ranged: bool) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    rng = random.Random(7)

    async def one(client: httpx.AsyncClient) -> int:
        headers = {}
        want = size
        if ranged:
            start = rng.randrange(0, max(1, size - RANGE_BYTES))
            end = min(size, start + RANGE_BYTES) - 1
            headers["Range"] = f"bytes={start}-{end}"
            want = end - start + 1
        got = 0
        async with client.stream("GET", path, headers=headers) as resp:
            if resp.status_code != (206 if ranged else 200):
                raise SystemExit(f"download: {resp.status_code}")
            async for chunk in resp.aiter_raw(1 << 20):
                got += len(chunk)
        if got != want:
            raise SystemExit(f"download: {got} bytes, expected {want}")
        return got

    return one


async def check_bytes(server: Server, path: str, digest: str) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
        resp = await client.get(path)
    if resp.status_code != 200 or hashlib.sha256(resp.content).hexdigest() != digest:
        raise SystemExit(f"{server.name}: /files answered {resp.status_code} or other bytes")


PHASES = ("submit", "download", "range")


def run_storage(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The storage rounds; returns (results[phase][server] = list of per-round figures, info)."""
    secret = secrets.token_urlsafe(32)
    root = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    moto = Moto()
    servers = {"local": Server.make("local", root, secret, None),
               "s3": Server.make("s3", root, secret, moto)}  # fmt: skip
    info: dict[str, Any] = {}
    results: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {
        p: {"local": [], "s3": []} for p in PHASES
    }
    try:
        local = servers["local"]
        local.start(workers=1)  # once, for the video to download
        key, path, took = render(local, args.resolution, args.duration)
        local.stop()
        video = local.data_dir / "files" / key
        moto.put(key, video)  # the same bytes under the same key: the same signed URL serves
        size = video.stat().st_size
        digest = hashlib.sha256(video.read_bytes()).hexdigest()
        info.update(video_bytes=size, render_s=took, key=key)
        for server in servers.values():
            server.start(workers=0)
            asyncio.run(check_bytes(server, path, digest))
        content = orjson.dumps(
            submit_body(data_uri(1280, 720, "JPEG"), args.resolution, args.duration)
        )
        info["submit_bytes"] = len(content)
        loads = {
            "submit": (submitter(content), args.concurrency),
            "download": (downloader(path, size, ranged=False), args.clients),
            "range": (downloader(path, size, ranged=True), args.clients),
        }
        for round_no in range(args.rounds):
            order = ["local", "s3"] if round_no % 2 == 0 else ["s3", "local"]
            for phase in PHASES:
                one, concurrency = loads[phase]
                for name in order:
                    server = servers[name]
                    cpu0, moto0 = server.cpu(), cpu_seconds(moto.proc.pid)
                    rps, bps, lat = asyncio.run(drive(server, one, args.seconds, concurrency))
                    n = max(1, len(lat))
                    server_cpu = (server.cpu() - cpu0) / n
                    moto_cpu = (cpu_seconds(moto.proc.pid) - moto0) / n
                    results[phase][name].append((rps, bps, server_cpu, moto_cpu))
    finally:
        for server in servers.values():
            server.stop()
        moto.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results, info


def report_storage(results: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> None:
    mb = 1_000_000
    print(
        f"storage: local disk vs S3 (moto {_moto_version()} on loopback), stillmotion serve "
        f"--workers 0 on SQLite pinned to 1 of {os.cpu_count()} cores, httpx load on the "
        f"others, moto unpinned; {args.rounds} rounds of {args.seconds:g} s per run, medians"
    )
    print(
        f"submit: {args.concurrency} clients, data: URI body {info['submit_bytes'] / 1000:.0f} "
        f"kB (1280x720 JPEG); download: {args.clients} clients, one {args.resolution} "
        f"{args.duration} s video of {info['video_bytes'] / mb:.2f} MB (rendered in "
        f"{info['render_s']:.1f} s), whole file / {RANGE_BYTES >> 20} MiB Range requests"
    )
    print(
        f"{'phase':<9} {'storage':<7} {'req/s':>8} {'MB/s':>8} "
        f"{'server CPU ms/req':>18} {'moto CPU ms/req':>16}"
    )
    for phase in PHASES:
        for name in ("local", "s3"):
            rps, bps, scpu, mcpu = (
                statistics.median(c) for c in zip(*results[phase][name], strict=True)
            )
            moto = f"{mcpu * 1000:16.2f}" if name == "s3" else f"{'-':>16}"
            print(f"{phase:<9} {name:<7} {rps:8.1f} {bps / mb:8.1f} {scpu * 1000:18.2f} {moto}")
    for phase in PHASES:
        pairs = zip(results[phase]["s3"], results[phase]["local"], strict=True)
        ratios = [s3[0] / local[0] for s3, local in pairs]
        ratio = statistics.median(ratios)
        verdict = "met" if ratio >= TARGET else "NOT met"
        what = "throughput" if phase == "submit" else "MB/s"
        rounds = " ".join(f"{r:.2f}" for r in ratios)
        print(
            f"{phase} {what} S3/local: {ratio:.2f}x (target >= {TARGET}x) {verdict}   "
            f"[rounds: {rounds}]"
        )


def _moto_version() -> str:
    try:
        import moto

        return str(moto.__version__)
    except ImportError:
        return "?"


def run_wake(args: argparse.Namespace) -> None:
    import wake_bench  # bench/wake_bench.py, beside this file

    ns = argparse.Namespace(tasks=args.tasks, poll=args.poll, pg=args.pg)
    try:
        results = asyncio.run(wake_bench.run(ns))
    except OSError as exc:
        print(f"wake-up: skipped, PostgreSQL at {args.pg} not reachable ({exc})")
        return
    except Exception as exc:  # it only prints; the storage figures above still stand
        print(f"wake-up: failed ({type(exc).__name__}: {exc})")
        return
    print(
        f"submit -> claim across two runtimes on PostgreSQL (bench/wake_bench.py), "
        f"{args.tasks} tasks each, worker poll interval {args.poll:g} s"
    )
    for mode, values in results.items():
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
        print(
            f"{mode:<7} median {statistics.median(values) * 1000:7.1f} ms   "
            f"p90 {p90 * 1000:7.1f} ms   ({len(values)} claims)"
        )
    ratio = statistics.median(results["poll"]) / statistics.median(results["notify"])
    print(f"polling / notify median latency: {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per measured run")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent submit clients")
    parser.add_argument("--clients", type=int, default=4, help="concurrent download clients")
    parser.add_argument("--resolution", default="720P", help="the rendered video's tier")
    parser.add_argument("--duration", type=int, default=5, help="the rendered video's seconds")
    parser.add_argument("--tasks", type=int, default=30, help="wake-up: tasks per mode")
    parser.add_argument("--poll", type=float, default=0.5, help="wake-up: worker poll interval")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-wake", action="store_true", help="skip the NOTIFY/polling part")
    parser.add_argument("--no-storage", action="store_true", help="skip the storage part")
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 2 s, 10 wake-up tasks (~1 minute)"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.tasks = 1, 2.0, 10
    started = time.monotonic()
    if not args.no_storage:
        cores = os.sched_getaffinity(0)
        if len(cores) > 1:  # this process (the load generator) off the servers' core
            os.sched_setaffinity(0, set(sorted(cores)[:-1]))
        results, info = run_storage(args)
        os.sched_setaffinity(0, cores)
        report_storage(results, info, args)
    if not args.no_wake:
        if not args.no_storage:
            print()
        run_wake(args)
    print(f"(whole run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
