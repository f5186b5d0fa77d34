"""S3-compatible object storage, against a real S3 server on loopback (moto's server mode).

No client is patched: ``S3Storage`` (aiobotocore) talks HTTP to ``ThreadedMotoServer`` on
127.0.0.1; the bucket is made and read back with boto3. Also: the whole service on such a
store (submit a data: URI, render, download the signed ``/files`` URL with and without a
Range, presigned URLs), start-up errors, and a signing secret shared by two runtimes.
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import pytest

from stillmotion import catalog
from stillmotion.api.app import create_app
from stillmotion.api.routes_files import parse_range
from stillmotion.config import Settings
from stillmotion.errors import NotFound
from stillmotion.media.geometry import frame_count, output_size
from stillmotion.runtime import ConfigurationError, Runtime, open_runtime
from stillmotion.storage.s3 import MIB, S3Storage
from stillmotion.storage.signing import UrlSigner
from stillmotion.tasks.keys import create_key
from tests.conftest import poll, seed_body

pytest.importorskip("aiobotocore")  # the `s3` extra, which `test` includes
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

SUBMIT = "/task/bailian/image2video"
SECRET = "s" * 40
_FLASH = catalog.get_model("wan2.6-i2v-flash")
assert _FLASH is not None
FRAMES = frame_count(2, _FLASH.fps)  # seed_body: 2 s


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    client: Any  # a boto3 S3 client

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket="stillmotion")
            yield S3(endpoint, "stillmotion", client)
            client.close()
        finally:
            server.stop()


def _signer() -> UrlSigner:
    return UrlSigner(SECRET.encode(), "http://test", 3600)


@pytest.fixture
async def storage(s3: S3, request: pytest.FixtureRequest) -> AsyncIterator[S3Storage]:
    st = await S3Storage.open(
        f"s3://{s3.bucket}/unit/{request.node.name}",
        _signer(),
        endpoint_url=s3.endpoint,
        region="us-east-1",
        multipart_threshold=1 * MIB,
        part_size=5 * MIB,
    )
    try:
        yield st
    finally:
        await st.aclose()


# -- S3Storage ---------------------------------------------------------------------------


async def test_put_fetch_ranges_list_delete(storage: S3Storage, s3: S3, tmp_path: Path) -> None:
    prefix = storage.location.prefix
    assert await storage.put_bytes("inputs/t1/image.png", b"png bytes") == 9
    big = os.urandom(11 * MIB + 123)  # over the threshold: three parts of 5 MiB at most
    src = tmp_path / "video.mp4"
    src.write_bytes(big)
    assert await storage.put_file("videos/t1-1.mp4", src) == len(big)
    head = s3.client.head_object(Bucket=s3.bucket, Key=prefix + "videos/t1-1.mp4")
    assert head["ContentLength"] == len(big)
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a multipart upload's ETag
    small = tmp_path / "small.mp4"
    small.write_bytes(b"x" * 1000)
    assert await storage.put_file("videos/t2-1.mp4", small) == 1000
    assert (
        "-" not in s3.client.head_object(Bucket=s3.bucket, Key=prefix + "videos/t2-1.mp4")["ETag"]
    )

    dest = tmp_path / "scratch" / "input-image"
    assert await storage.fetch_to("videos/t1-1.mp4", dest) == dest
    assert dest.read_bytes() == big
    assert not list(dest.parent.glob("*.part"))
    assert await storage.read_bytes("inputs/t1/image.png") == b"png bytes"
    info = await storage.stat("videos/t1-1.mp4")
    assert info.size == len(big) and info.etag

    chunks = [c async for c in await storage.open_range("videos/t1-1.mp4", 100, 5 * MIB)]
    assert b"".join(chunks) == big[100 : 5 * MIB + 1]
    assert len(chunks) > 1  # streamed, not read whole

    unread = await storage.open_range("videos/t1-1.mp4", 0, 10)
    await unread.aclose()  # type: ignore[attr-defined]  # a client gone before the first byte

    listed = dict(await storage.list_files("inputs/"))
    assert list(listed) == ["inputs/t1/image.png"]
    assert sorted(k for k, _ in await storage.list_files("")) == [
        "inputs/t1/image.png",
        "videos/t1-1.mp4",
        "videos/t2-1.mp4",
    ]
    assert await storage.delete_prefix("inputs/t1/") == 1
    assert await storage.list_files("inputs/") == []
    assert s3.keys(prefix) == [prefix + "videos/t1-1.mp4", prefix + "videos/t2-1.mp4"]


async def test_missing_and_invalid_keys_are_not_found(storage: S3Storage, tmp_path: Path) -> None:
    for call in (
        storage.stat("videos/none.mp4"),
        storage.fetch_to("videos/none.mp4", tmp_path / "x"),
        storage.open_range("videos/none.mp4", 0, 10),
        storage.read_bytes("../escape"),
        storage.put_bytes("/abs", b""),
    ):
        with pytest.raises(NotFound):
            await call
    assert not (tmp_path / "x").exists()


async def test_presigned_urls_download_and_repeat(s3: S3) -> None:
    st = await S3Storage.open(
        f"s3://{s3.bucket}/presigned",
        _signer(),
        endpoint_url=s3.endpoint,
        region="us-east-1",
        public="presigned",
        url_ttl=600,
    )
    try:
        await st.put_bytes("videos/p.mp4", b"presigned body")
        url = st.signed_url("videos/p.mp4", now=1000.0)
        assert url.startswith(f"{s3.endpoint}/{s3.bucket}/presigned/videos/p.mp4?")
        assert "X-Amz-Signature=" in url
        assert int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0]) >= 600
        assert st.signed_url("videos/p.mp4", now=1200.0) == url  # polls see one URL
        async with httpx.AsyncClient() as http:
            got = await http.get(url)
            assert got.status_code == 200 and got.content == b"presigned body"
    finally:
        await st.aclose()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=90-1000", (90, 99)),
        ("bytes=100-", False),
        ("bytes=-0", False),
        ("bytes=9-5", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_range_header_parsing(header: str | None, expected: object) -> None:
    assert parse_range(header, 100) == expected


# -- start-up errors -----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "endpoint", "message"),
    [
        ("s3://no-such-bucket/x", "moto", "does not exist"),
        ("s3://stillmotion/x", "closed", "unreachable"),
        ("s3://", "moto", "is not s3://bucket"),
        ("s3://key:secret@stillmotion/x", "moto", "names the bucket only"),
        ("ftp://host/x", "moto", "file:///path or s3://bucket/prefix"),
        ("file://host/x", "moto", "is not file:///path"),
    ],
)
async def test_bad_storage_fails_the_start(
    s3: S3, tmp_path: Path, url: str, endpoint: str, message: str
) -> None:
    ep = s3.endpoint if endpoint == "moto" else f"http://127.0.0.1:{_closed_port()}"
    settings = Settings(data_dir=tmp_path / "data", storage_url=url, s3_endpoint_url=ep)
    with pytest.raises(ConfigurationError, match=message) as caught:
        await open_runtime(settings)
    assert "testing" not in str(caught.value)  # never a credential


async def test_presigned_needs_an_object_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage_public="presigned")
    with pytest.raises(ConfigurationError, match="needs an s3:// storage_url"):
        await open_runtime(settings)


async def test_file_url_names_the_local_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage_url=f"file://{tmp_path}/elsewhere")
    rt = await open_runtime(settings)
    try:
        await rt.storage.put_bytes("inputs/t/x.bin", b"x")
        assert (tmp_path / "elsewhere" / "inputs" / "t" / "x.bin").read_bytes() == b"x"
    finally:
        await rt.close()


# -- the service on an object store ----------------------------------------------------------


def _settings(tmp_path: Path, s3: S3, prefix: str, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        workers=1,
        lease_seconds=5,
        poll_interval=0.05,
        allow_private_urls=True,
        key_cache_seconds=0,
        storage_url=f"s3://{s3.bucket}/{prefix}",
        s3_endpoint_url=s3.endpoint,
        s3_region="us-east-1",
        signing_secret=SECRET,
        **extra,
    )


def _client(rt: Runtime) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(runtime=rt))
    return httpx.AsyncClient(transport=transport, base_url=rt.settings.base_url)


async def _render_one(rt: Runtime, client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """Submit the seed request (a data: URI image) and wait for it: (task id, answer)."""
    auth = {"Authorization": f"Bearer {(await create_key(rt.store, 'test')).key}"}
    await rt.start_worker()
    resp = await client.post(SUBMIT, json=seed_body(), headers=auth)
    assert resp.status_code == 200, resp.text
    task_id = str(resp.json()["output"]["task_id"])
    done = await poll(client, task_id, auth)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    return task_id, done


def _frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        assert size == output_size(480, 320, "720P")  # seed_body's image
        return sum(1 for _ in container.decode(stream))


async def test_a_task_renders_into_the_bucket_and_streams_back(s3: S3, tmp_path: Path) -> None:
    rt = await open_runtime(_settings(tmp_path, s3, "svc"))
    try:
        async with _client(rt) as client:
            task_id, done = await _render_one(rt, client)
            url = done["output"]["video_url"]
            assert url.startswith(f"{rt.settings.base_url}/files/videos/{task_id}-1.mp4?")
            whole = await client.get(url)
            assert whole.status_code == 200, whole.text
            assert whole.headers["content-type"] == "video/mp4"
            assert whole.headers["accept-ranges"] == "bytes"
            data = whole.content
            assert int(whole.headers["content-length"]) == len(data) > 1000
            assert _frames(data) == FRAMES

            part = await client.get(url, headers={"Range": "bytes=100-1099"})
            assert part.status_code == 206
            assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
            assert part.content == data[100:1100]
            tail = await client.get(url, headers={"Range": "bytes=-10"})
            assert tail.status_code == 206 and tail.content == data[-10:]
            beyond = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
            assert beyond.status_code == 416
            assert beyond.headers["content-range"] == f"bytes */{len(data)}"
            head = await client.head(url)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(data))
            forged = url.replace("Signature=", "Signature=0")
            assert (await client.get(forged)).status_code == 403

        keys = s3.keys("svc/")
        assert f"svc/videos/{task_id}-1.mp4" in keys
        assert any(k.startswith(f"svc/inputs/{task_id}/image") for k in keys), keys
        stored = s3.client.get_object(Bucket=s3.bucket, Key=f"svc/videos/{task_id}-1.mp4")
        assert stored["Body"].read() == data
        files = rt.settings.data_dir / "files"
        assert not files.exists() or not any(files.rglob("*"))
        work = rt.settings.data_dir / "work"
        assert not [p for p in work.rglob("*") if p.is_file()]  # the scratch copies are gone
    finally:
        await rt.close()


async def test_presigned_video_url_downloads_from_the_store(s3: S3, tmp_path: Path) -> None:
    rt = await open_runtime(_settings(tmp_path, s3, "pub", storage_public="presigned"))
    try:
        async with _client(rt) as client:
            task_id, done = await _render_one(rt, client)
        url = done["output"]["video_url"]
        assert url.startswith(f"{s3.endpoint}/{s3.bucket}/pub/videos/{task_id}-1.mp4?")
        async with httpx.AsyncClient() as http:
            got = await http.get(url)
        assert got.status_code == 200
        assert _frames(got.content) == FRAMES
    finally:
        await rt.close()


# -- the signing secret --------------------------------------------------------------------


async def test_runtimes_sharing_a_secret_verify_each_others_urls(tmp_path: Path) -> None:
    def settings(name: str, **extra: Any) -> Settings:
        return Settings(data_dir=tmp_path / name, **extra)

    (tmp_path / "secret").write_text("f" * 64 + "\n")
    a = await open_runtime(settings("a", signing_secret=SECRET))
    b = await open_runtime(settings("b", signing_secret=SECRET))
    c = await open_runtime(settings("c", signing_secret="t" * 40))
    d = await open_runtime(settings("d", signing_secret_file=tmp_path / "secret"))
    e = await open_runtime(settings("e", signing_secret_file=tmp_path / "secret"))
    f = await open_runtime(settings("f"))  # the data dir's own signing.key
    try:
        for signer, others in ((a, [b]), (d, [e])):
            url = signer.storage.signed_url("videos/x-1.mp4")
            query = parse_qs(urlsplit(url).query)
            expires, sig = int(query["Expires"][0]), query["Signature"][0]
            assert signer.storage.verify("videos/x-1.mp4", expires, sig)
            for other in others:
                assert other.storage.verify("videos/x-1.mp4", expires, sig)
            for stranger in [rt for rt in (a, c, d, f) if rt is not signer]:
                assert not stranger.storage.verify("videos/x-1.mp4", expires, sig)
        assert (tmp_path / "f" / "signing.key").is_file()
        assert not (tmp_path / "a" / "signing.key").exists()
    finally:
        for rt in (a, b, c, d, e, f):
            await rt.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"signing_secret": "short"}, "too short"),
        ({"signing_secret_file": Path("/nonexistent/secret")}, "cannot be read"),
        ({"signing_secret": SECRET, "signing_secret_file": Path("/x")}, "not both"),
    ],
)
async def test_bad_signing_secret_fails_the_start(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await open_runtime(Settings(data_dir=tmp_path / "data", **extra))
