"""Does a big data-URI submit stall the server? /healthz latency idle and under submit load.

    python bench/stall_bench.py [--probes 300] [--submits 6] [--clients 4]

Starts `stillmotion serve --workers 0` (API only: renders would compete for the cores) on a
free loopback port with a temporary data dir, then measures `GET /healthz` one request after
another: first idle, then while `--clients` processes each send `--submits` data-URI submits
back to back, cycling through a 19 MB BMP, a 15 MB PNG (both as `img_url`) and a 14 MB WAV
(as `audio_url`), all generated here. Prints p50/p99 of both phases and the ratio of the
p99s; target: loaded p99 within 3x the idle p99 measured in the same run.

The same clients and probes are then run against a control: a bare ASGI app on uvicorn
(httptools, uvloop: what `serve` uses) that reads each body and discards it, no parsing, no
decoding. Its loaded/idle ratio is what this machine's cores, the clients' traffic and
uvicorn's body reading cost on their own; on a 2-core machine it is already far over 3x, so
the figure that tells what stillmotion adds is its loaded p99 over the control's. Every loop
is bounded; the servers and the data dir are removed at the end. It only prints.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests
from PIL import Image

from stillmotion.testing.images import data_uri, sample_image

SUBMIT = "/task/bailian/image2video"
MODEL = "wan2.6-i2v-flash"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def encoded(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def big_bmp() -> bytes:
    buf = io.BytesIO()
    sample_image(2900, 2200).save(buf, format="BMP")  # 2900 * 2200 * 3 = 19.1 MB
    return buf.getvalue()


def big_png() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, (2240, 2240, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "RGB").save(buf, format="PNG", compress_level=1)  # ~15 MB
    return buf.getvalue()


def big_wav(seconds: float = 24.0, rate: int = 96_000) -> bytes:
    """24-bit stereo at 96 kHz: 24 s is 13.8 MB, within the 3-30 s and 15 MB bounds."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (np.sin(2 * math.pi * 440 * t) * (2**22)).astype("<i4")
    frames = np.repeat(tone, 2).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def bodies() -> list[tuple[str, bytes]]:
    def body(img_url: str, audio_url: str | None = None) -> bytes:
        inp: dict[str, Any] = {"prompt": "A slow push-in.", "img_url": img_url}
        if audio_url is not None:
            inp["audio_url"] = audio_url
        params = {"resolution": "720P", "duration": 5}
        return orjson.dumps({"model": MODEL, "input": inp, "parameters": params})

    wav = big_wav()
    return [
        ("bmp", body(encoded(big_bmp(), "image/bmp"))),
        ("png", body(encoded(big_png(), "image/png"))),
        ("wav", body(data_uri(480, 320, "JPEG"), encoded(wav, "audio/wav"))),
    ]


def load(base: str, key: str, payloads: list[tuple[str, bytes]], n: int, start: int) -> None:
    """One client: ``n`` submits back to back, starting at a different body than the others."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with requests.Session() as http:
        for i in range(n):
            name, body = payloads[(start + i) % len(payloads)]
            resp = http.post(base + SUBMIT, data=body, headers=headers, timeout=120)
            if resp.status_code != 200:
                print(f"  submit {name}: {resp.status_code} {resp.text[:200]}", flush=True)


def probe(http: requests.Session, base: str) -> float:
    t0 = time.perf_counter()
    resp = http.get(base + "/healthz", timeout=30)
    elapsed = time.perf_counter() - t0
    assert resp.status_code == 200, resp.text
    return elapsed * 1000


def p99(samples: list[float]) -> float:
    return sorted(samples)[max(0, math.ceil(len(samples) * 0.99) - 1)]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    env = {**os.environ, "STILLMOTION_DATA_DIR": str(data_dir), "STILLMOTION_PORT": str(port),
           "STILLMOTION_WORKERS": "0", "STILLMOTION_LOG_LEVEL": "warning"}  # fmt: skip
    cli = [sys.executable, "-m", "stillmotion"]
    key = (
        subprocess.run(
            [*cli, "keys", "create", "--name", "stall"], env=env, capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
        .splitlines()[-1]
    )
    proc = subprocess.Popen([*cli, "serve"], env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_up(proc, base)
    return proc, base, key


def measure(base: str, key: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    payloads = bodies()
    sizes = ", ".join(f"{n} {len(b) / 2**20:.1f} MB" for n, b in payloads)
    print(f"bodies: {sizes}", flush=True)
    with requests.Session() as http:
        for _ in range(20):  # warm up the connection and the route
            probe(http, base)
        idle = [probe(http, base) for _ in range(args.probes)]
        ctx = multiprocessing.get_context("fork")
        clients = [
            ctx.Process(target=load, args=(base, key, payloads, args.submits, i))
            for i in range(args.clients)
        ]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        loaded: list[float] = []
        while any(c.is_alive() for c in clients) and len(loaded) < 100_000:
            loaded.append(probe(http, base))
            time.sleep(0.005)
        for c in clients:
            c.join(timeout=300)
        seconds = time.monotonic() - t0
    report("idle", idle)
    report("loaded", loaded)
    done = args.clients * args.submits
    print(f"submits: {done} in {seconds:.1f} s, {done / seconds:.2f}/s", flush=True)
    return idle, loaded


async def control_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The control server: reads a POST body to the end and discards it; answers 200 JSON."""
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})


def start_control() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = (
        "import sys, uvicorn; sys.path.insert(0, sys.argv[2]); import stall_bench; "
        "uvicorn.run(stall_bench.control_app, port=int(sys.argv[1]), log_level='warning', "
        "access_log=False)"
    )
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.Popen([sys.executable, "-c", code, str(port), here], start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_up(proc, base)
    return proc, base


def wait_up(proc: subprocess.Popen[bytes], base: str) -> None:
    for _ in range(600):
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit("server did not start in 60 s")


def report(name: str, samples: list[float]) -> None:
    print(
        f"{name:>6}: n={len(samples)} p50={statistics.median(samples):.2f} ms "
        f"p99={p99(samples):.2f} ms max={max(samples):.2f} ms",
        flush=True,
    )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=300, help="idle /healthz requests")
    parser.add_argument("--submits", type=int, default=6, help="submits per client")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stall-bench-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        print("stillmotion serve:", flush=True)
        proc, base, key = start_server(tmp / "data")
        idle, loaded = measure(base, key, args)
        stop(proc)
        print("control (bare ASGI app reading the same bodies):", flush=True)
        proc, base = start_control()
        c_idle, c_loaded = measure(base, key, args)
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    ratio, c_ratio = p99(loaded) / p99(idle), p99(c_loaded) / p99(c_idle)
    verdict = "within" if ratio <= 3 else "NOT within"
    print(f"stillmotion p99 loaded / idle: {ratio:.2f}x ({verdict} the 3x target)")
    print(f"control     p99 loaded / idle: {c_ratio:.2f}x (the machine's own floor)")
    print(f"stillmotion loaded p99 / control loaded p99: {p99(loaded) / p99(c_loaded):.2f}x")


if __name__ == "__main__":
    main()
