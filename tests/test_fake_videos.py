"""The fake ``/v1/videos`` server (vLLM-Omni's shape): lifecycle, bodies, list, delete, keys
and its scripted faults (docs/fake-videos.md)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from stillmotion.testing.fake_videos import FakeVideosConfig, FakeVideosServer, VideoFault
from tests.servers import wait_for_port

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeVideosServer]:
    config = FakeVideosConfig(queued_seconds=2, running_seconds=10)
    with FakeVideosServer(config, clock=clock) as server:
        yield server


@pytest.fixture
def http(fake: FakeVideosServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as client:
        yield client


def create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = http.post("/videos", json={"prompt": "a cat", **body})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def assert_error(resp: httpx.Response, status: int, message: str = "") -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert message in err["message"]


def test_a_video_goes_queued_in_progress_completed(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    video = create(http, model="wan-i2v", size="320x240", seconds=2, num_frames=12, fps=8)
    assert video["id"].startswith("video_gen_") and video["object"] == "video"
    assert (video["status"], video["progress"], video["model"]) == ("queued", 0, "wan-i2v")
    assert (video["size"], video["seconds"], video["created_at"]) == ("320x240", "2", 1800000000)
    assert video["completed_at"] is None and video["error"] is None
    url = f"/videos/{video['id']}"
    assert_error(http.get(url + "/content"), 404, "still in-progress")
    seen = []
    for step in (3, 3, 3):  # 1, 4, 7 s into a 10 s run
        clock.now += step
        body = http.get(url).json()
        assert body["status"] == "in_progress"
        seen.append(body["progress"])
    assert 0 < seen[0] < seen[1] < seen[2] < 100
    assert_error(http.get(url + "/content"), 404)
    clock.now += 5
    done = http.get(url).json()
    assert (done["status"], done["progress"]) == ("completed", 100)
    assert done["completed_at"] == 1800000012 and done["expires_at"] == 1800000012 + 3600
    resp = http.get(url + "/content")
    assert resp.status_code == 200 and resp.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(resp.content)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        assert stream.codec_context.name == "h264" and stream.average_rate == 8
    assert len(frames) == 12 and (frames[0].width, frames[0].height) == (320, 240)
    assert fake.state.stats()["polls"] == 4


def test_frames_are_capped_and_defaults_apply(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    video = create(http)  # no size, seconds or fps: 832x480, "4", 16 fps -> 64, capped to 16
    assert (video["size"], video["seconds"], video["model"]) == (
        "832x480",
        "4",
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    )
    clock.now += 20
    data = http.get(f"/videos/{video['id']}/content").content
    with av.open(io.BytesIO(data)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16


def test_engine_extras_from_the_top_level_and_extension_objects(
    http: httpx.Client, fake: FakeVideosServer
) -> None:
    create(
        http,
        input_reference="https://e.com/a.png",
        seed=7,
        negative_prompt="blur",
        nvext={"seed": 8, "num_inference_steps": 4, "guidance_scale": 5, "num_frames": 33},
    )
    record = fake.state.submits[-1]
    assert record["content_type"] == "application/json" and record["body"]["nvext"]["seed"] == 8
    params = record["params"]
    assert params["input_reference"] == {"type": "url", "url": "https://e.com/a.png"}
    assert (params["seed"], params["negative_prompt"]) == (7, "blur")  # the top level wins
    assert (params["num_inference_steps"], params["guidance_scale"]) == (4, 5.0)
    assert params["num_frames"] == 33
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    create(http, input_reference=data_uri, extra_params='{"flow_shift": 3}')
    params = fake.state.submits[-1]["params"]
    assert params["input_reference"] == {
        "type": "data",
        "media_type": "image/png",
        "bytes": len(PNG),
    }
    assert params["flow_shift"] == 3.0
    create(http, image_reference={"image_url": "https://e.com/b.png"})
    assert fake.state.submits[-1]["params"]["input_reference"]["url"] == "https://e.com/b.png"


def test_a_multipart_create_with_a_file_part(http: httpx.Client, fake: FakeVideosServer) -> None:
    form = {"prompt": "a dog", "size": "640x360", "seconds": "8", "num_inference_steps": "40"}
    files = {"input_reference": ("dog.png", PNG, "image/png")}
    resp = http.post("/videos", data=form, files=files)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["size"], resp.json()["seconds"]) == ("640x360", "8")
    record = fake.state.submits[-1]
    assert record["content_type"] == "multipart/form-data"
    assert record["files"]["input_reference"]["bytes"] == len(PNG)
    params = record["params"]
    assert params["num_inference_steps"] == 40  # a form's strings, read as numbers
    assert params["input_reference"]["filename"] == "dog.png"
    assert params["input_reference"]["content_type"] == "image/png"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"size": "320x240"}, "prompt: Field required"),
        ({"prompt": "x", "size": "big"}, "size: WIDTHxHEIGHT"),
        ({"prompt": "x", "size": "321x240"}, "even sides"),
        ({"prompt": "x", "seconds": "0"}, "seconds"),
        ({"prompt": "x", "seconds": 2.5}, "seconds"),
        ({"prompt": "x", "seed": "abc"}, "seed: an integer"),
        ({"prompt": "x", "input_reference": "ftp://e.com/a.png"}, "input_reference"),
        ({"prompt": "x", "input_reference": "data:image/png,raw"}, "base64"),
        ({"prompt": "x", "input_reference": {"file_id": "f"}}, "not implemented"),
        (
            {"prompt": "x", "input_reference": "https://e/a", "image_reference": "https://e/b"},
            "not both",
        ),
    ],
)
def test_invalid_creates_are_refused_with_400(
    http: httpx.Client, fake: FakeVideosServer, body: dict[str, Any], message: str
) -> None:
    assert_error(http.post("/videos", json=body), 400, message)
    assert fake.state.videos == {}


def test_the_openai_sdk_drives_it(fake: FakeVideosServer, clock: Clock) -> None:
    openai = pytest.importorskip("openai")
    fake.state.config.keys = {"sk-sdk"}
    client = openai.OpenAI(api_key="sk-sdk", base_url=fake.base_url, max_retries=0)
    video = client.videos.create(
        prompt="a cat",
        input_reference=("cat.png", PNG, "image/png"),
        size="1280x720",
        seconds="4",
        extra_body={"num_inference_steps": 4},
    )
    assert (video.status, video.size) == ("queued", "1280x720")
    assert fake.state.submits[-1]["content_type"] == "multipart/form-data"
    assert fake.state.submits[-1]["params"]["num_inference_steps"] == 4
    clock.now += 20
    assert client.videos.retrieve(video.id).status == "completed"
    assert [v.id for v in client.videos.list(limit=10).data] == [video.id]
    assert client.videos.download_content(video.id).read()[4:8] == b"ftyp"
    assert client.videos.delete(video.id).deleted is True
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-other", base_url=fake.base_url, max_retries=0).videos.list()


def test_keys_any_when_none_configured_else_bearer(
    http: httpx.Client, fake: FakeVideosServer
) -> None:
    assert http.get("/videos").status_code == 200  # no key, none configured
    fake.state.control({"keys": ["sk-a", "sk-b"]})
    assert_error(http.get("/videos"), 401)
    assert_error(http.get("/videos", headers={"Authorization": "Bearer sk-c"}), 401)
    assert http.get("/videos", headers={"Authorization": "Bearer sk-b"}).status_code == 200
    assert http.get("/models", headers={"Authorization": "Bearer sk-a"}).json()["data"]
    assert fake.state.stats()["keys"] == 2


def test_list_pages_with_after_limit_and_order(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    ids = []
    for _ in range(5):
        ids.append(create(http)["id"])
        clock.now += 1
    page = http.get("/videos").json()
    assert page["object"] == "list" and [v["id"] for v in page["data"]] == ids[::-1]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[4], ids[0], False)
    page = http.get("/videos", params={"limit": 2, "order": "asc"}).json()
    assert [v["id"] for v in page["data"]] == ids[:2] and page["has_more"] is True
    page = http.get("/videos", params={"limit": 2, "order": "asc", "after": ids[1]}).json()
    assert [v["id"] for v in page["data"]] == ids[2:4] and page["has_more"] is True
    page = http.get("/videos", params={"limit": 2, "after": ids[1]}).json()  # desc
    assert [v["id"] for v in page["data"]] == [ids[0]] and page["has_more"] is False
    empty = http.get("/videos", params={"after": "video_gen_unknown"}).json()
    assert empty["data"] == [] and empty["first_id"] is None
    assert_error(http.get("/videos", params={"order": "up"}), 400, "order")
    assert_error(http.get("/videos", params={"limit": 101}), 400, "limit")


def test_delete_cancels_and_forgets_a_video_in_any_state(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    first, second = create(http)["id"], create(http)["id"]
    assert fake.state.stats()["peak_active"] == 2
    resp = http.delete(f"/videos/{first}")  # queued: cancelled, then removed (vLLM-Omni)
    assert resp.json() == {"id": first, "object": "video.deleted", "deleted": True}
    assert_error(http.get(f"/videos/{first}"), 404, "Video not found")
    assert_error(http.get(f"/videos/{first}/content"), 404)
    assert_error(http.delete(f"/videos/{first}"), 404)
    clock.now += 20
    assert http.delete(f"/videos/{second}").json()["deleted"] is True  # completed
    stats = fake.state.stats()
    assert stats["deletes"] == [first, second] and stats["videos"] == 0
    assert stats["peak_active"] == 2 and stats["active"] == 0
    create(http)
    assert fake.state.stats()["peak_active"] == 2  # one active now


def test_scripted_429s_on_submits_and_polls(http: httpx.Client, fake: FakeVideosServer) -> None:
    faults = [
        {"op": "submit", "status": 429, "retry_after": 2, "times": 2},
        {"op": "get", "status": 429, "retry_after": 0.5},
    ]
    http.post(fake.root_url + "/_control", json={"faults": faults})
    for _ in range(2):
        resp = http.post("/videos", json={"prompt": "a cat"})
        assert_error(resp, 429)
        assert resp.headers["Retry-After"] == "2"
        assert resp.json()["error"]["type"] == "Too Many Requests"
    video = create(http)
    resp = http.get(f"/videos/{video['id']}")
    assert_error(resp, 429)
    assert resp.headers["Retry-After"] == "0.5"
    assert http.get(f"/videos/{video['id']}").status_code == 200
    stats = http.get(fake.root_url + "/_control").json()
    assert stats["videos"] == 1 and len(stats["submits"]) == 1  # a refused submit never arrived
    assert stats["requests"] == {"submit": 3, "get": 2} and stats["faults"] == []


def test_scripted_failures_of_submits_and_of_tasks(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    fake.state.add_fault(VideoFault("submit", status=503, message="busy", code="overloaded"))
    resp = http.post("/videos", json={"prompt": "a cat"})
    assert_error(resp, 503, "busy")
    assert resp.json()["error"]["code"] == "overloaded" and fake.state.videos == {}
    control = {"fail_tasks": {"times": 2, "code": "OutOfMemoryError", "message": "CUDA OOM"}}
    http.post(fake.root_url + "/_control", json=control)
    failing = [create(http)["id"], create(http)["id"]]
    fine = create(http, prompt="[fake:fail=ValueError:bad frame] a cat")["id"]
    ok = create(http)["id"]
    clock.now += 5
    assert http.get(f"/videos/{failing[0]}").json()["status"] == "in_progress"
    clock.now += 10
    for video_id in failing:
        body = http.get(f"/videos/{video_id}").json()
        assert (body["status"], body["progress"]) == ("failed", 0)
        assert body["error"] == {"code": "OutOfMemoryError", "message": "CUDA OOM"}
        assert body["completed_at"] is not None and body["expires_at"] is None
        assert_error(http.get(f"/videos/{video_id}/content"), 422, "failed")
    assert http.get(f"/videos/{fine}").json()["error"] == {
        "code": "ValueError",
        "message": "bad frame",
    }
    assert http.get(f"/videos/{ok}").json()["status"] == "completed"


def test_prompt_directives_set_a_videos_timings(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    video = create(http, prompt="[fake:queued=0][fake:running=100] slow")
    assert video["status"] == "in_progress"
    clock.now += 50
    assert http.get(f"/videos/{video['id']}").json()["progress"] == 50


def test_a_lost_answer_still_makes_the_video(http: httpx.Client, fake: FakeVideosServer) -> None:
    fake.state.add_fault(VideoFault("submit", drop=True))
    headers = {"X-Stillmotion-Submit-Id": "sub-1"}
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/videos", json={"prompt": "a cat"}, headers=headers)
    fake.state.add_fault(VideoFault("submit", status=500, create=True))
    resp = http.post("/videos", json={"prompt": "a dog"}, headers={"X-Stillmotion-Submit-Id": "2"})
    assert_error(resp, 500)
    assert len(fake.state.videos) == 2
    listed = {v["submit_id"]: v for v in http.get("/videos").json()["data"]}
    assert set(listed) == {"sub-1", "2"} and listed["sub-1"]["prompt"] == "a cat"
    again = create(http, prompt="a cat (retried)")  # no header: a new video
    assert again["submit_id"] is None
    resp = http.post("/videos", json={"prompt": "a cat"}, headers=headers)  # the same id
    assert resp.json()["id"] == listed["sub-1"]["id"] and resp.json()["submit_id"] == "sub-1"
    assert len(fake.state.videos) == 3 and len(fake.state.submits) == 4
    assert fake.state.submits[-1]["video_id"] == listed["sub-1"]["id"]


def test_control_resets_and_checks_its_input(http: httpx.Client, fake: FakeVideosServer) -> None:
    create(http)
    http.delete(f"/videos/{create(http)['id']}")
    control = fake.root_url + "/_control"
    resp = http.post(control, json={"queued_seconds": 0, "running_seconds": 0.5, "reset": True})
    stats = resp.json()
    assert stats["submits"] == [] and stats["videos"] == 0 and stats["deletes"] == []
    assert stats["peak_active"] == 0 and stats["requests"] == {}
    assert fake.state.config.queued_seconds == 0 and create(http)["status"] == "in_progress"
    assert_error(http.post(control, json={"faults": [{"op": "nope"}]}), 400, "fault op")
    assert_error(http.post(control, content=b"[1]"), 400)
    assert set(http.get(control).json()) >= {"submits", "polls", "peak_active", "deletes"}
    assert_error(http.get("/nothing-here"), 404)


def test_cli_command_serves_the_fake(tmp_path: Path) -> None:
    """`stillmotion fake-videos --port 0` binds a free port, writes it to the port file once
    it accepts connections, and names its base URL on stderr."""
    port_file, log = tmp_path / "fake.port", tmp_path / "fake.log"
    cmd = [sys.executable, "-m", "stillmotion", "fake-videos", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--key", "sk-cli", "--queued", "0", "--model", "m"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stderr=out, env={**os.environ, "NO_COLOR": "1"})
    try:
        port = wait_for_port(proc, port_file, log.read_text, "fake-videos")
        base = f"http://127.0.0.1:{port}/v1"
        resp = httpx.post(
            base + "/videos",
            json={"prompt": "a cat"},
            headers={"Authorization": "Bearer sk-cli"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        assert (resp.json()["status"], resp.json()["model"]) == ("in_progress", "m")
        assert httpx.get(base + "/videos", timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"fake /v1/videos on http://127.0.0.1:{port}/v1 (keys: 1)" in log.read_text()


def test_width_height_fields_a_urlencoded_form_and_other_faults(
    http: httpx.Client, fake: FakeVideosServer, clock: Clock
) -> None:
    video = create(http, width=640, height=352)
    assert video["size"] == "640x352"
    resp = http.post("/videos", data={"prompt": "a form", "seconds": "8"})  # urlencoded
    assert resp.json()["seconds"] == "8"
    assert fake.state.submits[-1]["content_type"] == "application/x-www-form-urlencoded"
    fake.state.add_fault(VideoFault("delete", status=409, message="Cancellation in progress."))
    fake.state.add_fault(VideoFault("content", status=503, times=-1))
    fake.state.add_fault(VideoFault("list", status=500, type="server_error", code="boom"))
    assert_error(http.delete(f"/videos/{video['id']}"), 409, "Cancellation")
    assert video["id"] in fake.state.videos
    clock.now += 20
    assert_error(http.get(f"/videos/{video['id']}/content"), 503)
    assert_error(http.get(f"/videos/{video['id']}/content"), 503)  # until cleared
    resp = http.get("/videos")
    assert resp.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "server_error",
        "param": None,
        "code": "boom",
    }
    fake.state.control({"clear_faults": True})
    assert http.get(f"/videos/{video['id']}/content").status_code == 200
    assert http.get(fake.root_url + "/health").status_code == 200
