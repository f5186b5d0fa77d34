"""The ``wan`` engine on tiny, randomly initialised Wan pipelines (CPU, offline).

Each family's tiny pipeline is built in code, saved with ``save_pretrained`` and loaded back
through the engine's own loading code. Tasks go through the service: in process (a runtime
and a worker built for the ``wan`` engine) and through real ``stillmotion serve --workers 0``
and ``stillmotion worker --engine wan`` processes.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import httpx
import numpy as np
import pytest
import requests

from stillmotion.api.app import create_app
from stillmotion.catalog import get_model
from stillmotion.config import Settings
from stillmotion.domain import MediaRef, VideoRequest
from stillmotion.engines.base import EngineJob
from stillmotion.engines.wan.config import (
    FAMILIES,
    FAMILY_5B,
    FAMILY_21,
    FAMILY_A14B,
    WanOptions,
    WanSetupError,
    resolve_family,
    wan_num_frames,
    wan_size,
)
from stillmotion.engines.wan.engine import DEFAULT_NEGATIVE_PROMPT, WanEngine, plan_job
from stillmotion.runtime import ConfigurationError, Runtime, build_engines, open_runtime
from stillmotion.tasks.keys import create_key
from stillmotion.testing.images import data_uri, sample_image
from stillmotion.testing.media_server import MediaServer
from stillmotion.testing.tiny_wan import save_tiny_weights
from tests.conftest import poll
from tests.servers import wait_for_port

#: A 480x320 first frame at 720P is 1168x768 in the core; capped at 4096 px it is 64x48
#: (multiples of 16) or 64x32 (multiples of 32, TI2V-5B). Two seconds are 33 frames at
#: 16 fps or 49 at 24 fps.
MAX_AREA = 4096
EXPECTED = {
    FAMILY_21: (64, 48, 16, 33),
    FAMILY_A14B: (64, 48, 16, 33),
    FAMILY_5B: (64, 32, 24, 49),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan-weights")
    return {family: save_tiny_weights(family, root / family) for family in FAMILIES}


def wan_settings(data: Path, weights_dir: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data,
        "workers": 1,
        "lease_seconds": 1.5,
        "poll_interval": 0.05,
        "allow_private_urls": True,
        "key_cache_seconds": 0,
        "cancel_running": True,
        "routes": "wan2.6-i2v-flash=wan",
        "wan_weights_dir": weights_dir,
        "wan_steps": 2,
        "wan_max_area": MAX_AREA,
    }
    values.update(extra)
    return Settings(**values)


def submit_body(img_url: str | None = None, **parameters: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"resolution": "720P", "duration": 2, "audio": False}
    params.update(parameters)
    return {
        "model": "wan2.6-i2v-flash",
        "input": {
            "prompt": "a cat walks slowly through the garden",
            "negative_prompt": "blurry",
            "img_url": img_url or data_uri(480, 320, "JPEG"),
        },
        "parameters": params,
    }


def probe_video(data: bytes) -> dict[str, Any]:
    container: Any
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = len(list(container.decode(stream)))
        return {
            "width": stream.width,
            "height": stream.height,
            "fps": float(stream.average_rate or 0),
            "frames": frames,
            "audio": bool(container.streams.audio),
        }


def wav_bytes(seconds: float = 3.0, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440.0 * t) * 12_000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


# -- configuration, checks and request arithmetic ---------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_from_the_weights(family: str, weights: dict[str, Path]) -> None:
    assert resolve_family(weights[family]).name == family
    assert resolve_family(weights[family], family).name == family


def test_official_defaults_per_family() -> None:
    a14b, ti2v, wan21 = FAMILIES[FAMILY_A14B], FAMILIES[FAMILY_5B], FAMILIES[FAMILY_21]
    assert (a14b.fps, a14b.steps, a14b.guidance, a14b.guidance_2) == (16, 40, 3.5, 3.5)
    assert (ti2v.fps, ti2v.steps, ti2v.multiple, ti2v.flow_shift) == (24, 50, 32, 5.0)
    assert (wan21.flow_shift_480p, wan21.flow_shift, wan21.guidance) == (3.0, 5.0, 5.0)


def test_frame_count_is_the_nearest_4k_plus_1() -> None:
    assert wan_num_frames(5, 16) == 81
    assert wan_num_frames(5, 24) == 121
    assert wan_num_frames(2, 16) == 33
    assert wan_num_frames(10, 16) == 161
    assert wan_num_frames(15, 24) == 361
    assert all((wan_num_frames(d, 16) - 1) % 4 == 0 for d in range(1, 16))


def test_size_floors_to_the_family_multiple_and_caps_the_area() -> None:
    assert wan_size(1104, 816, 16) == (1104, 816)
    assert wan_size(1104, 816, 32) == (1088, 800)
    assert wan_size(1168, 768, 16, MAX_AREA) == (64, 48)
    assert wan_size(1168, 768, 32, MAX_AREA) == (64, 32)
    w, h = wan_size(1920, 1088, 16, 1280 * 720)
    assert w * h <= 1280 * 720 and w % 16 == 0 and h % 16 == 0 and abs(w / h - 1920 / 1088) < 0.03


def _job(tmp_path: Path, width: int, height: int, duration: int, negative: str = "") -> EngineJob:
    spec = get_model("wan2.6-i2v-flash")
    assert spec is not None
    request = VideoRequest(
        model=spec.name,
        prompt="a red kite over the sea",
        negative_prompt=negative,
        image=MediaRef(url="http://example.invalid/a.png"),
        audio_source=None,
        resolution="720P",
        duration=duration,
        audio=False,
        shot_type="single",
        seed=1234,
        prompt_extend=False,
        watermark=False,
    )
    return EngineJob(
        task_id="t1",
        spec=spec,
        request=request,
        width=width,
        height=height,
        fps=spec.fps,
        num_frames=duration * spec.fps,
        work_dir=tmp_path,
    )


def test_plan_maps_the_request_per_family(tmp_path: Path) -> None:
    image = sample_image(480, 320)
    ti2v = plan_job(_job(tmp_path, 1104, 816, 5), FAMILIES[FAMILY_5B], WanOptions(), image)
    call = ti2v.call
    assert (call.width, call.height, call.num_frames, ti2v.fps) == (1088, 800, 121, 24)
    assert (call.steps, call.guidance, call.guidance_2, call.flow_shift) == (50, 5.0, None, 5.0)
    assert call.image.size == (1088, 800) and call.seed == 1234
    assert call.prompt == "a red kite over the sea"
    assert call.negative_prompt == DEFAULT_NEGATIVE_PROMPT  # none in the request

    job = _job(tmp_path, 832, 480, 5, negative="blurry")
    a14b = plan_job(job, FAMILIES[FAMILY_A14B], WanOptions(guidance_2=2.0), image).call
    assert (a14b.num_frames, a14b.guidance, a14b.guidance_2) == (81, 3.5, 2.0)
    assert a14b.negative_prompt == "blurry"
    wan21 = plan_job(job, FAMILIES[FAMILY_21], WanOptions(steps=7), image).call
    assert (wan21.flow_shift, wan21.steps, wan21.guidance_2) == (3.0, 7, None)  # 480P: 3.0
    big = plan_job(_job(tmp_path, 1280, 720, 5), FAMILIES[FAMILY_21], WanOptions(), image)
    assert big.call.flow_shift == 5.0


# -- set-up errors ----------------------------------------------------------------------


def _broken_copy(src: Path, dest: Path, *remove: str) -> Path:
    shutil.copytree(src, dest)
    for rel in remove:
        target = dest / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return dest


def test_incomplete_weights_name_the_missing_files(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    broken = _broken_copy(
        weights[FAMILY_A14B],
        tmp_path / "a14b",
        "transformer_2/diffusion_pytorch_model.safetensors",
        "scheduler",
    )
    with pytest.raises(WanSetupError) as info:
        resolve_family(broken)
    message = info.value.message
    assert "Wan 2.2 I2V-A14B" in message and str(broken) in message
    assert "transformer_2/*.safetensors" in message
    assert "scheduler/scheduler_config.json" in message
    assert "STILLMOTION_WAN_WEIGHTS_DIR" in message

    no_clip = _broken_copy(weights[FAMILY_21], tmp_path / "w21", "image_encoder")
    with pytest.raises(WanSetupError, match="image_encoder/config.json"):
        resolve_family(no_clip)


def test_missing_shard_and_wrong_family_are_reported(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    sharded = _broken_copy(weights[FAMILY_5B], tmp_path / "5b")
    index = sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "part-00001.safetensors"}}')
    with pytest.raises(WanSetupError, match="transformer/part-00001.safetensors"):
        resolve_family(sharded)
    with pytest.raises(WanSetupError, match="STILLMOTION_WAN_FAMILY=wan2.1-i2v-14b"):
        resolve_family(weights[FAMILY_5B], FAMILY_21)


def test_missing_directory_and_unset_setting_say_where_weights_go(tmp_path: Path) -> None:
    with pytest.raises(WanSetupError, match="STILLMOTION_WAN_WEIGHTS_DIR is not set"):
        resolve_family(None)
    with pytest.raises(WanSetupError, match="does not exist") as info:
        resolve_family(tmp_path / "nowhere", FAMILY_5B)
    assert "Wan-AI/Wan2.2-TI2V-5B-Diffusers" in info.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(WanSetupError, match="no model_index.json"):
        resolve_family(tmp_path / "empty")


def test_missing_extra_says_what_to_install(
    weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "diffusers" else real(name)
    )
    with pytest.raises(WanSetupError) as info:
        WanEngine(weights_dir=weights[FAMILY_5B])
    assert "pip install 'stillmotion[wan]'" in info.value.message
    assert "missing: diffusers" in info.value.message


def test_build_engines_turns_setup_errors_into_configuration_errors(tmp_path: Path) -> None:
    settings = wan_settings(tmp_path / "data", tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="does not exist"):
        build_engines(settings)


def _cli_env(data: Path, weights_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "COLUMNS": "400",  # rich must not wrap the message
        "STILLMOTION_DATA_DIR": str(data),
        "STILLMOTION_ROUTES": "wan2.6-i2v-flash=wan",
        "STILLMOTION_WAN_WEIGHTS_DIR": str(weights_dir),
        "STILLMOTION_WAN_STEPS": "2",
        "STILLMOTION_WAN_MAX_AREA": str(MAX_AREA),
        "STILLMOTION_LOG_LEVEL": "warning",
        **extra,
    }


@pytest.mark.parametrize("command", [["worker", "--engine", "wan"], ["serve", "--port", "0"]])
def test_cli_exits_non_zero_with_the_message(
    command: list[str], weights: dict[str, Path], tmp_path: Path
) -> None:
    broken = _broken_copy(weights[FAMILY_A14B], tmp_path / "w", "transformer_2")
    proc = subprocess.run(
        [sys.executable, "-m", "stillmotion", *command],
        env=_cli_env(tmp_path / "data", broken),
        capture_output=True,
        timeout=90,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "incomplete" in stderr and "transformer_2/config.json" in stderr, stderr
    assert "serving on" not in stderr


# -- tasks through the service (in process) ---------------------------------------------


@pytest.fixture
async def wan_runtime(
    request: pytest.FixtureRequest, weights: dict[str, Path], tmp_path: Path
) -> AsyncIterator[Runtime]:
    family, extra = request.param if isinstance(request.param, tuple) else (request.param, {})
    runtime = await open_runtime(wan_settings(tmp_path / "data", weights[family], **extra))
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture
async def wan_client(
    wan_runtime: Runtime,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    key = (await create_key(wan_runtime.store, "wan")).key
    transport = httpx.ASGITransport(app=create_app(runtime=wan_runtime))
    base = wan_runtime.settings.base_url
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        yield client, {"Authorization": f"Bearer {key}"}


async def _submit(client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any]) -> str:
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_id"])


async def _status(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> str:
    resp = await client.get(f"/task/{task_id}", headers=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_status"])


async def _video(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(body["output"]["video_url"])
    resp = await client.get(f"{url.path}?{url.query}")
    assert resp.status_code == 200
    return probe_video(resp.content)


@pytest.mark.parametrize(
    ("wan_runtime", "params"),
    [
        (FAMILY_21, {"audio": True}),  # audio_url from a media server
        (FAMILY_A14B, {"audio": False}),
        (FAMILY_5B, {"audio": True, "watermark": True}),  # synthesised ambience
    ],
    indirect=["wan_runtime"],
)
async def test_task_makes_the_right_video(
    wan_runtime: Runtime,
    wan_client: tuple[httpx.AsyncClient, dict[str, str]],
    params: dict[str, Any],
) -> None:
    client, auth = wan_client
    family = resolve_family(wan_runtime.settings.wan_weights_dir).name
    worker = await wan_runtime.start_worker(["wan"], dedicated=True)
    assert worker.limit("wan") == 1
    with MediaServer({"/a.wav": (wav_bytes(), "audio/wav")}) as media:
        body = submit_body(**params)
        if family == FAMILY_21:
            body["input"]["audio_url"] = media.url("/a.wav")
        task_id = await _submit(client, auth, body)
        done = await poll(client, task_id, auth, timeout=120)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    width, height, fps, frames = EXPECTED[family]
    video = await _video(client, done)
    assert video == {
        "width": width,
        "height": height,
        "fps": fps,
        "frames": frames,
        "audio": params["audio"],
    }
    row = await wan_runtime.store.get_task(task_id)
    assert row is not None and row.result is not None
    assert (row.result["fps"], row.result["num_frames"]) == (fps, frames)


@pytest.mark.parametrize("wan_runtime", [FAMILY_A14B], indirect=True)
async def test_serve_worker_leaves_the_wan_engine_to_a_dedicated_worker(
    wan_runtime: Runtime,
    wan_client: tuple[httpx.AsyncClient, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, auth = wan_client
    worker = await wan_runtime.start_worker()  # the worker inside `serve`
    assert "wan" not in worker.engines and "motion" in worker.engines
    assert "stillmotion worker --engine wan" in caplog.text
    wan_task = await _submit(client, auth, submit_body())  # routed to wan
    motion_body = submit_body()
    motion_body["model"] = "wan2.6-i2v"  # routed to motion
    del motion_body["parameters"]["audio"]
    motion_task = await _submit(client, auth, motion_body)
    done = await poll(client, motion_task, auth, timeout=120)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    # The serve worker ran a task submitted after the wan task and never claimed the wan one.
    events = [e["kind"] for e in await wan_runtime.store.events(wan_task)]
    assert events == ["created"]
    assert await _status(client, auth, wan_task) == "PENDING"
    await worker.stop()
    dedicated = await wan_runtime.start_worker(["wan"], dedicated=True)
    assert list(dedicated.engines) == ["wan"]
    done = await poll(client, wan_task, auth, timeout=120)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    events = [e for e in await wan_runtime.store.events(wan_task) if e["kind"] == "claimed"]
    claimed_by = [e["detail"]["worker"].partition("#")[0] for e in events]
    assert claimed_by == [dedicated.worker_id] != [worker.worker_id]


class SlowSteps:
    """Makes every transformer call take ``delay`` seconds and counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        from diffusers import WanTransformer3DModel

        self.calls = 0
        real = WanTransformer3DModel.forward

        def slow(model: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            time.sleep(delay)
            return real(model, *args, **kwargs)

        monkeypatch.setattr(WanTransformer3DModel, "forward", slow)


async def _running_progress(
    client: httpx.AsyncClient, task_id: str, auth: dict[str, str], until: float
) -> list[int]:
    """Progress values of the RUNNING task, until one reaches ``until`` (bounded wait)."""
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        out = (await client.get(f"/task/{task_id}", headers=auth)).json()["output"]
        assert out["task_status"] in ("PENDING", "RUNNING"), out
        if out["task_status"] == "RUNNING" and (not seen or seen[-1] != out["progress"]):
            seen.append(out["progress"])
        if seen and seen[-1] >= until:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"progress never reached {until}: {seen}")


STEPS = 10  # x 2 transformer calls (CFG) x 0.15 s: about 3 s of denoising


@pytest.mark.parametrize("wan_runtime", [(FAMILY_5B, {"wan_steps": STEPS})], indirect=True)
async def test_progress_advances_per_step(
    wan_runtime: Runtime,
    wan_client: tuple[httpx.AsyncClient, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, auth = wan_client
    slow = SlowSteps(monkeypatch, 0.15)
    await wan_runtime.start_worker(["wan"], dedicated=True)
    task_id = await _submit(client, auth, submit_body())
    seen = await _running_progress(client, task_id, auth, until=50)
    done = await poll(client, task_id, auth, timeout=60)
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert done["output"]["progress"] == 100
    assert len(seen) >= 2 and seen == sorted(seen) and 0 < seen[-1] < 100, seen
    assert slow.calls == 2 * STEPS


@pytest.mark.parametrize("wan_runtime", [(FAMILY_A14B, {"wan_steps": STEPS})], indirect=True)
async def test_cancel_stops_the_generation_between_steps(
    wan_runtime: Runtime,
    wan_client: tuple[httpx.AsyncClient, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, auth = wan_client
    slow = SlowSteps(monkeypatch, 0.15)
    await wan_runtime.start_worker(["wan"], dedicated=True)
    task_id = await _submit(client, auth, submit_body())
    await _running_progress(client, task_id, auth, until=10)
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 200, resp.text
    done = await poll(client, task_id, auth, timeout=30)
    assert done["output"]["task_status"] == "CANCELED"
    assert "video_url" not in done["output"]
    calls = slow.calls
    assert 0 < calls < 2 * STEPS, calls  # stopped between steps, not at the end
    await asyncio.sleep(0.5)
    assert slow.calls == calls  # and nothing ran after


# -- through real processes: `stillmotion serve --workers 0` + `stillmotion worker` ---------


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stillmotion", *args], env=env, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop()


def _wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, "serve exited early"
        time.sleep(0.1)
    raise AssertionError("serve did not come up in 60 s")


def test_task_through_a_dedicated_worker_process(
    weights: dict[str, Path], tmp_path: Path, processes: Processes
) -> None:
    port_file = tmp_path / "serve.port"  # serve binds port 0 and writes the port it got here
    env = _cli_env(
        tmp_path / "data",
        weights[FAMILY_A14B],
        STILLMOTION_PORT="0",
        STILLMOTION_PORT_FILE=str(port_file),
        STILLMOTION_LEASE_SECONDS="3",
    )
    serve = processes.start(["serve", "--workers", "0"], env)
    base = f"http://127.0.0.1:{wait_for_port(serve, port_file)}"
    _wait_up(base, serve)
    key = subprocess.run(
        [sys.executable, "-m", "stillmotion", "keys", "create", "--name", "t"],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    auth = {"Authorization": f"Bearer {key.strip()}"}
    worker = processes.start(["worker", "--engine", "wan"], env)
    resp = requests.post(
        base + "/task/bailian/image2video",
        json=submit_body(audio=True),
        headers=auth,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["output"]["task_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = requests.get(f"{base}/task/{task_id}", headers=auth, timeout=10).json()["output"]
        if out["task_status"] not in ("PENDING", "RUNNING"):
            break
        assert worker.poll() is None, "the wan worker exited"
        time.sleep(0.2)
    assert out["task_status"] == "SUCCEEDED", out
    video = probe_video(requests.get(out["video_url"], timeout=30).content)
    assert video == {"width": 64, "height": 48, "fps": 16, "frames": 33, "audio": True}
