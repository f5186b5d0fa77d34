"""Unit tests: catalog, geometry, usage shapes, URL signing, settings, routes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from stillmotion import catalog
from stillmotion.config import Settings
from stillmotion.media.geometry import frame_count, output_size
from stillmotion.runtime import ConfigurationError, resolve_routes
from stillmotion.storage.signing import UrlSigner, load_or_create_secret


@pytest.mark.parametrize(
    ("size", "tier", "expected"),
    [
        ((750, 1000), "720P", (816, 1104)),  # the contract's documented example
        ((1280, 720), "720P", (1280, 720)),
        ((832, 480), "480P", (832, 480)),
        ((1920, 1080), "1080P", (1920, 1072)),
        ((1000, 1000), "720P", (960, 960)),
        ((4000, 1000), "480P", (1248, 304)),
    ],
)
def test_output_size(size: tuple[int, int], tier: str, expected: tuple[int, int]) -> None:
    w, h = output_size(*size, tier)
    assert (w, h) == expected
    assert w % 16 == 0 and h % 16 == 0


def test_output_size_keeps_aspect_and_area() -> None:
    for w, h in [(240, 8000), (8000, 240), (3000, 2000), (1234, 987)]:
        for tier, (tw, th) in catalog.TIERS.items():
            ow, oh = output_size(w, h, tier)
            assert abs(ow / oh - w / h) / (w / h) < 0.25
            assert 0.85 * tw * th <= ow * oh <= tw * th * 1.001 or min(ow, oh) < 64


def test_frames_are_duration_times_fps() -> None:
    assert frame_count(5, 30) == 150
    assert frame_count(5, 16) == 80  # Wan 2.1's 16 fps
    assert {m.fps for m in catalog.MODELS.values()} == {16, 30}


def test_catalog_rules() -> None:
    flash = catalog.MODELS["wan2.6-i2v-flash"]
    assert flash.durations == tuple(range(2, 16)) and flash.default_duration == 5
    assert flash.resolutions == ("720P", "1080P") and flash.default_resolution == "1080P"
    assert flash.audio == "optional"
    assert catalog.MODELS["wan2.6-i2v"].audio == "always"
    preview = catalog.MODELS["wan2.5-i2v-preview"]
    assert preview.durations == (5, 10) and preview.resolutions == ("480P", "720P", "1080P")
    assert preview.duration_rule() == "5 or 10"
    assert flash.duration_rule() == "an integer from 2 to 15"
    assert flash.price_per_second("720P", audio=False) == Decimal("0.15")


def test_usage_shapes() -> None:
    flash = catalog.MODELS["wan2.6-i2v-flash"]
    assert catalog.usage_for(flash, "1080P", 5, False) == {
        "duration": 5,
        "input_video_duration": 0,
        "output_video_duration": 5,
        "SR": 1080,
        "video_count": 1,
        "audio": False,
    }
    assert "audio" not in catalog.usage_for(catalog.MODELS["wan2.6-i2v"], "720P", 5, True)
    assert catalog.usage_for(catalog.MODELS["wan2.5-i2v-preview"], "480P", 10, True) == {
        "duration": 10,
        "SR": 480,
        "video_count": 1,
    }


def test_signer_round_trip_and_expiry(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path / "k")
    assert load_or_create_secret(tmp_path / "k") == secret
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    signer = UrlSigner(secret, "http://h:1/", ttl=86400)
    url = signer.url("videos/a.mp4", now=1000.0)
    assert url.startswith("http://h:1/files/videos/a.mp4?Expires=")
    expires = int(url.split("Expires=")[1].split("&")[0])
    sig = url.split("Signature=")[1]
    assert expires >= 1000 + 86400
    assert signer.verify("videos/a.mp4", expires, sig, now=2000.0)
    assert not signer.verify("videos/b.mp4", expires, sig, now=2000.0)
    assert not signer.verify("videos/a.mp4", expires + 1, sig, now=2000.0)
    assert not signer.verify("videos/a.mp4", expires, sig, now=expires + 1.0)
    assert signer.url("videos/a.mp4", now=1001.0) == url  # stable across polls
    other = UrlSigner(b"x" * 64, "http://h:1", ttl=86400)
    assert not other.verify("videos/a.mp4", expires, sig, now=2000.0)


def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "sm.toml"
    toml.write_text('port = 9100\nworkers = 3\ntime_zone = "Asia/Shanghai"\n')
    monkeypatch.setenv("STILLMOTION_CONFIG", str(toml))
    monkeypatch.setenv("STILLMOTION_WORKERS", "5")
    s = Settings()
    assert s.port == 9100 and s.workers == 5 and s.time_zone == "Asia/Shanghai"
    assert s.base_url == "http://127.0.0.1:9100"
    assert Settings(public_url="https://v.example.com/").base_url == "https://v.example.com"


def test_routes_parse_and_fail_clearly() -> None:
    routes = resolve_routes(Settings(routes="wan2.6-i2v=motion"))
    assert routes == {m: "motion" for m in catalog.model_names()}
    with pytest.raises(ConfigurationError, match="unknown engine 'nope'"):
        resolve_routes(Settings(routes="wan2.6-i2v=nope"))
    with pytest.raises(ConfigurationError, match="unknown model"):
        resolve_routes(Settings(routes="wan9=motion"))
    with pytest.raises(ConfigurationError, match="MODEL=ENGINE"):
        resolve_routes(Settings(routes="wan2.6-i2v"))


def test_uuid4_text_is_a_random_uuid_and_pools_are_per_process() -> None:
    import multiprocessing
    import uuid as uuid_mod

    from stillmotion.ids import random_bytes, uuid4_text

    ids = [uuid4_text() for _ in range(2000)]  # more than one 4 KB pool
    assert len(set(ids)) == 2000
    parsed = [uuid_mod.UUID(i) for i in ids]
    assert {(u.version, u.variant) for u in parsed} == {(4, uuid_mod.RFC_4122)}
    assert all(str(u) == i for u, i in zip(parsed, ids, strict=True))
    random_bytes(1)  # this process's pool is filled; a forked child must not reuse it
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply(random_bytes, (16,))
    assert child != random_bytes(16)
