"""The catalog as data: the shipped models.toml, `[[models]]` in the config, and a model
added there served end to end."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from stillmotion import catalog
from stillmotion.api.app import create_app
from stillmotion.catalog import CatalogError
from stillmotion.config import Settings
from stillmotion.runtime import ConfigurationError, open_runtime, resolve_routes
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.ledger import billed_millis
from tests.conftest import poll, seed_body

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(autouse=True)
def _shipped_catalog_after() -> Iterator[None]:
    yield
    catalog.install()  # the next test sees the shipped catalog, whatever this one installed


def test_the_shipped_models_and_their_rules() -> None:
    models = catalog.load()
    assert set(models) >= {
        *("wan2.6-i2v-flash", "wan2.6-i2v", "wan2.5-i2v-preview", "wan2.2-i2v-flash"),
        *("wan2.2-i2v-plus", "wanx2.1-i2v-plus", "wanx2.1-i2v-turbo", "wan2.7-i2v"),
        *("wan3.0-video", "wan3.0-video-prime", "wan2.2-kf2v-flash", "wanx2.1-kf2v-plus"),
    }
    wan27 = models["wan2.7-i2v"]
    assert wan27.body == "media" and wan27.durations == tuple(range(2, 16))
    assert dict(wan27.media) == {"first_frame": 1, "last_frame": 1, "driving_audio": 1,
                                 "first_clip": 1}  # fmt: skip
    wan30 = models["wan3.0-video"]
    assert wan30.media["reference_image"] == 10 and wan30.durations[-1] == 30
    prime = models["wan3.0-video-prime"]  # `base`: wan3.0's rules under its own name
    assert prime.media == wan30.media and prime.description != wan30.description
    assert models["wan2.2-kf2v-flash"].body == "kf2v"
    turbo = models["wanx2.1-i2v-turbo"]
    assert turbo.durations == (3, 4, 5) and turbo.fps == 16 and turbo.usage == "ratio"
    assert turbo.templates == models["wanx2.1-i2v-plus"].templates
    assert "rotation" in models["wan2.6-i2v"].templates
    assert not models["wan2.6-i2v-flash"].templates
    assert models["wan2.2-i2v-plus"].price_per_second("1080P", False) == Decimal("0.7")


def test_every_shipped_model_is_in_docs_models_md() -> None:
    text = (DOCS / "models.md").read_text()
    for name in catalog.load():
        assert f"| `{name}` |" in text, name


def test_a_config_table_overrides_field_by_field_or_adds_from_a_base() -> None:
    models = catalog.load(
        [
            {"name": "wan2.6-i2v", "prompt_max": 100},
            {"name": "wan2.7-i2v-2026-11-20", "base": "wan2.7-i2v", "description": "snap"},
        ]
    )
    assert models["wan2.6-i2v"].prompt_max == 100
    assert models["wan2.6-i2v"].durations == tuple(range(2, 16))  # the rest kept
    snap = models["wan2.7-i2v-2026-11-20"]
    assert snap.media == models["wan2.7-i2v"].media and snap.description == "snap"
    assert catalog.load()["wan2.6-i2v"].prompt_max == 1500  # nothing shared was changed


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "wan2.6-i2v", "colour": "red"}, "unknown field(s) ['colour']"),
        ({"name": "wan2.6-i2v", "default_resolution": "480P"}, "default_resolution"),
        ({"name": "wan2.6-i2v", "price_cny": {"720P": "0.6"}}, "price_cny"),
        ({"name": "wan2.6-i2v", "price_cny": {"720P": "x", "1080P": "1"}}, "price_cny.720P"),
        ({"name": "new", "base": "nope"}, "base 'nope'"),
        ({"name": "new", "family": "x"}, "missing field(s)"),
        ({"name": "wan2.7-i2v", "media": {"hologram": 1}}, "media type"),
        ({"name": "wan2.7-i2v", "durations": {"min": 5, "max": 2}}, "durations.max"),
        ({"name": "wan2.6-i2v", "resolutions": ["4K"]}, "resolutions"),
        ({"name": ""}, "every model needs a name"),
    ],
)
def test_a_bad_table_is_refused_naming_the_model_and_field(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        catalog.load([table])
    before = dict(catalog.MODELS)
    with pytest.raises(CatalogError):
        catalog.install([table])
    assert catalog.MODELS == before  # a refused install changes nothing


def test_a_bad_config_table_fails_the_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models=[{"name": "wan2.6-i2v", "fps": 0}])
    with pytest.raises(ConfigurationError, match=r"\[\[models\]\]: model 'wan2.6-i2v': fps"):
        resolve_routes(settings)


def test_usage_shapes() -> None:
    models = catalog.load()
    flash, turbo, wan22 = (
        models["wan2.6-i2v-flash"],
        models["wanx2.1-i2v-turbo"],
        models["wan2.2-i2v-flash"],
    )
    assert catalog.usage_for(flash, "720P", 5, False) == {
        "duration": 5, "input_video_duration": 0, "output_video_duration": 5, "SR": 720,
        "video_count": 1, "audio": False,
    }  # fmt: skip
    assert catalog.usage_for(turbo, "480P", 3, False, (848, 480)) == {
        "video_duration": 3, "video_ratio": "848*480", "video_count": 1,
    }  # fmt: skip
    assert catalog.usage_for(wan22, "1080P", 5, False) == {"duration": 5, "SR": 1080,
                                                            "video_count": 1}  # fmt: skip


def test_every_usage_shape_bills_its_duration() -> None:
    models = catalog.load()
    for name, size in (("wan2.6-i2v", None), ("wanx2.1-i2v-turbo", (848, 480)),
                       ("wan2.2-i2v-flash", None)):  # fmt: skip
        usage = catalog.usage_for(models[name], "480P" if size else "720P", 3, False, size)
        assert billed_millis({"usage": usage, "fps": 30, "num_frames": 1}) == 3000, name


@pytest.fixture
async def snapshot_client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    config = tmp_path / "stillmotion.toml"
    config.write_text(
        '[[models]]\nname = "wan2.2-i2v-flash-2026-12"\nbase = "wan2.2-i2v-flash"\n'
        'description = "a dated snapshot"\nprice_cny = { "480P" = "0.05", "720P" = "0.1", '
        '"1080P" = "0.2" }\n'
    )
    monkey = pytest.MonkeyPatch()
    monkey.setenv("STILLMOTION_CONFIG", str(config))
    try:
        settings = Settings(
            data_dir=tmp_path / "data", workers=1, poll_interval=0.05, lease_seconds=5
        )
    finally:
        monkey.undo()
    runtime = await open_runtime(settings)
    try:
        key = (await create_key(runtime.store, "t")).key
        await runtime.start_worker()
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url=settings.base_url) as client:
            yield client, key
    finally:
        await runtime.close()


async def test_a_model_added_in_the_config_is_served_end_to_end(
    snapshot_client: tuple[httpx.AsyncClient, str],
) -> None:
    client, key = snapshot_client
    auth = {"Authorization": f"Bearer {key}"}
    listed = (await client.get("/v1/models")).json()["data"]
    snap = next(m for m in listed if m["id"] == "wan2.2-i2v-flash-2026-12")
    assert snap["description"] == "a dated snapshot" and snap["engine"] == "motion"
    assert snap["durations"] == [5] and snap["audio"] == "never"
    assert snap["price"]["per_second"]["480P"] == {"silent": "0.05"}
    body = seed_body(resolution="480P", duration=5)
    body["model"] = "wan2.2-i2v-flash-2026-12"
    body["parameters"].pop("prompt_extend")
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    done = await poll(client, resp.json()["output"]["task_id"], auth, timeout=120)
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert done["usage"] == {"duration": 5, "SR": 480, "video_count": 1}  # its family's shape
    bad = dict(body, parameters={"duration": 10})
    refused = await client.post("/task/bailian/image2video", json=bad, headers=auth)
    assert refused.status_code == 400 and "allowed values: 5" in refused.json()["message"]
