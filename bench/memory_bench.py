"""Peak memory of the whole service while it renders one task, per kind of input.

    python bench/memory_bench.py            # all inputs; --only control,bmp to pick some
    python bench/memory_bench.py --resolution 1080P --console-script

For each input the script starts a fresh ``python -m stillmotion serve`` (or the installed
``stillmotion`` script: ``--console-script``; one worker, its own temp data dir, a free
loopback port), measures the idle RSS of its process tree, submits one 720P (or
``--resolution 1080P``) 5 s task whose media come from a loopback media server, and samples
the summed RSS of the service and all its children (the render pool) every ~20 ms until
the task has SUCCEEDED. It prints each input's peak above the idle baseline, and that as a
ratio of the 1280x720 control's (and, for information, the peak of the ``serve`` process
alone).
Target (issue 10): every input within 1.5x of the control.

Inputs: the control (1280x720 PNG photo-like), an 8000x8000 RGB PNG and an 8000x8000
16-bit RGBA PNG (both small files), a ~19 MB BMP, a ~20 MB JPEG of noise, and a ~14 MB WAV
as ``audio_url`` with the control image. Loopback only; every server is stopped at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stillmotion.testing.media_server import MediaServer  # noqa: E402

MB = 1024 * 1024
SAMPLE_S = 0.02
TASK_TIMEOUT_S = 300.0
TARGET = 1.5

Media = tuple[bytes, str]


# -- inputs ---------------------------------------------------------------------------------


def photo(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Gradients, soft blobs and grain: a stand-in for a photograph."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([60 + 140 * x / w, 50 + 150 * y / h, 200 - 120 * (x + y) / (w + h)], -1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.01, 0.06) * w
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    grain = rng.normal(0, 3, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str, **opts: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **opts)
    return out.getvalue()


def big_flat_png() -> bytes:
    """8000x8000 RGB: a gradient-free picture with a few shapes, so the file stays small."""
    img = Image.new("RGB", (8000, 8000), (40, 90, 150))
    draw = ImageDraw.Draw(img)
    draw.ellipse((2500, 2500, 5500, 5500), fill=(230, 200, 60))
    draw.rectangle((600, 5800, 2400, 7400), fill=(180, 40, 40))
    return encoded(img, "PNG", compress_level=9)


def png_rgba16(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG (Pillow cannot write one): flat colour, a square, half-transparent."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixel = np.array([0x3000, 0x8000, 0xC000, 0xFFFF], dtype=">u2")
    plain = np.tile(pixel, width).tobytes()
    marked = np.tile(pixel, width).reshape(width, 4)
    marked[width // 3 : 2 * width // 3] = (0xF000, 0xD000, 0x2000, 0x8000)
    marked_row = marked.tobytes()
    comp = zlib.compressobj(9)
    parts = []
    for y in range(height):
        row = marked_row if height // 3 <= y < 2 * height // 3 else plain
        parts.append(comp.compress(b"\0" + row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def noise_jpeg(target: int = 20 * 1000 * 1000) -> bytes:
    """A JPEG of noise just under ``target`` bytes (noise does not compress)."""
    rng = np.random.default_rng(7)
    side = 3800
    while True:
        img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        data = encoded(img, "JPEG", quality=98)
        if len(data) <= target:
            return data
        side = int(side * (target / len(data)) ** 0.5 * 0.99)


def big_wav(seconds: float = 24.0, rate: int = 96_000) -> bytes:
    """Stereo 24-bit PCM at 96 kHz: ~14 MB for 24 s."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (2**23 - 1)).astype("<i4")
    frames = np.stack([tone, tone], -1).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return out.getvalue()


def make_inputs() -> dict[str, tuple[Media, Media | None]]:
    """name -> (image, audio or None)."""
    control: Media = (encoded(photo((1280, 720)), "PNG"), "image/png")
    bmp = photo((2560, 2560), seed=2)
    return {
        "control 1280x720 PNG": (control, None),
        "8000x8000 RGB PNG": ((big_flat_png(), "image/png"), None),
        "8000x8000 RGBA 16-bit PNG": ((png_rgba16(8000, 8000), "image/png"), None),
        "2560x2560 BMP": ((encoded(bmp, "BMP"), "image/bmp"), None),
        "noise JPEG": ((noise_jpeg(), "image/jpeg"), None),
        "control + WAV": (control, (big_wav(), "audio/wav")),
    }


# -- the service ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(script: bool) -> list[str]:
    """``python -m stillmotion``, or the installed console script next to this Python."""
    if not script:
        return [sys.executable, "-m", "stillmotion"]
    path = Path(sys.executable).with_name("stillmotion")
    if not path.exists():
        raise SystemExit(f"no console script at {path}")
    return [sys.executable, str(path)]


class Service:
    """``stillmotion serve`` in its own session, with a key; stopped with its children."""

    def __init__(self, data_dir: Path, script: bool = False) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "STILLMOTION_DATA_DIR": str(data_dir),
            "STILLMOTION_PORT": str(self.port),
            "STILLMOTION_WORKERS": "1",
            "STILLMOTION_ALLOW_PRIVATE_URLS": "1",
            "STILLMOTION_LOG_LEVEL": "warning",
        }
        cmd = [sys.executable, "-m", "stillmotion", "keys", "create", "--name", "bench"]
        out = subprocess.run(cmd, env=self.env, capture_output=True, check=True, timeout=60)
        self.key = out.stdout.decode().strip().splitlines()[-1].strip()
        self.proc = subprocess.Popen(
            [*_entry(script), "serve"], env=self.env, start_new_session=True
        )
        self._wait_up()

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited with {self.proc.returncode}")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise SystemExit("serve did not start in 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)

    def submit(self, img_url: str, audio_url: str | None, resolution: str) -> str:
        body: dict[str, Any] = {
            "model": "wan2.6-i2v-flash",
            "input": {"prompt": "The camera pushes in slowly.", "img_url": img_url},
            "parameters": {"resolution": resolution, "duration": 5, "audio": True},
        }
        if audio_url:
            body["input"]["audio_url"] = audio_url
        headers = {"Authorization": f"Bearer {self.key}"}
        resp = requests.post(self.base + "/task/bailian/image2video", json=body, headers=headers)
        resp.raise_for_status()
        return str(resp.json()["output"]["task_id"])

    def status(self, task_id: str) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {self.key}"}
        resp = requests.get(f"{self.base}/task/{task_id}", headers=headers, timeout=10)
        return dict(resp.json()["output"])


def tree_rss(pid: int) -> tuple[int, int]:
    """Summed RSS of ``pid`` and all its descendants (processes that vanish count 0), and
    the RSS of ``pid`` alone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for proc in procs:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            sizes.append(0)
    return sum(sizes), sizes[0]


class PeakSampler:
    """Samples :func:`tree_rss` every ``SAMPLE_S`` on a thread, keeping the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.root_peak = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, root = tree_rss(self.pid)
            self.peak, self.root_peak = max(self.peak, total), max(self.root_peak, root)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def idle_rss(pid: int, seconds: float = 1.0) -> int:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(tree_rss(pid)[0])
        time.sleep(SAMPLE_S * 5)
    return sorted(samples)[len(samples) // 2]


def measure(
    root: Path, name: str, image: str, audio: str | None, resolution: str, script: bool
) -> dict:
    service = Service(root / name.replace(" ", "_"), script)
    try:
        base = idle_rss(service.proc.pid)
        started = time.monotonic()
        with PeakSampler(service.proc.pid) as sampler:
            task_id = service.submit(image, audio, resolution)
            while True:
                out = service.status(task_id)
                if out["task_status"] in ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"):
                    break
                if time.monotonic() - started > TASK_TIMEOUT_S:
                    raise SystemExit(f"{name}: task not done in {TASK_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
        seconds = time.monotonic() - started
        if out["task_status"] != "SUCCEEDED":
            raise SystemExit(f"{name}: task ended {out['task_status']}: {out.get('message')}")
        return {"idle": base, "peak": sampler.peak, "serve": sampler.root_peak, "seconds": seconds}
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated words picking inputs")
    parser.add_argument("--resolution", default="720P", choices=["720P", "1080P"])
    parser.add_argument(
        "--console-script",
        action="store_true",
        help="start the installed `stillmotion` script instead of `python -m stillmotion`",
    )
    args = parser.parse_args()
    inputs = make_inputs()
    words = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    names = [n for n in inputs if not words or any(w in n.lower() for w in words)]
    if words and "control 1280x720 PNG" not in names:
        names.insert(0, "control 1280x720 PNG")  # the ratios need it
    files: dict[str, Media] = {}
    urls: dict[str, tuple[str, str | None]] = {}
    for i, name in enumerate(names):
        image, audio = inputs[name]
        files[f"/img{i}"] = image
        if audio is not None:
            files[f"/aud{i}"] = audio
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp, MediaServer(files) as media:
        for i, name in enumerate(names):
            urls[name] = (
                media.url(f"/img{i}"),
                media.url(f"/aud{i}") if f"/aud{i}" in files else None,
            )
            print(f"rendering {name} ...", flush=True)
            results[name] = measure(
                Path(tmp), name, *urls[name], args.resolution, args.console_script
            )
    report(names, inputs, results, args.resolution)


def report(names: list[str], inputs: dict, results: dict[str, dict], resolution: str) -> None:
    sizes: Callable[[str], str] = lambda n: " + ".join(  # noqa: E731
        f"{len(m[0]) / MB:.1f} MB" for m in inputs[n] if m is not None
    )
    control = results[names[0]]
    control_delta = control["peak"] - control["idle"]
    print(
        f"\n{os.cpu_count()} cores; {resolution} 5 s, one worker; peak RSS of serve + its children"
    )
    print(
        f"{'input':<28} {'file':>16} {'idle MB':>8} {'peak MB':>8} {'serve':>6} {'+MB':>7} "
        f"{'ratio':>6} {'s':>6}"
    )
    worst = 0.0
    for name in names:
        r = results[name]
        delta = r["peak"] - r["idle"]
        ratio = delta / control_delta
        worst = max(worst, ratio)
        print(
            f"{name:<28} {sizes(name):>16} {r['idle'] / MB:8.0f} {r['peak'] / MB:8.0f} "
            f"{r['serve'] / MB:6.0f} "
            f"{delta / MB:7.0f} {ratio:6.2f} {r['seconds']:6.1f}"
        )
    verdict = "met" if worst <= TARGET else "NOT met"
    print(f"\nworst ratio {worst:.2f} (target <= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
