"""Retention (``tasks/retention.py``) on both databases, with local storage and S3 (moto on
loopback): old results' objects deleted and their bodies marked expired, young ones kept,
batches, task records deleted with ``verify_billing`` still passing, and two sweepers at once.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stillmotion.storage.base import Storage
from stillmotion.storage.local import LocalStorage
from stillmotion.storage.signing import UrlSigner
from stillmotion.tasks.admission import Ask
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.render import TaskRenderer
from stillmotion.tasks.retention import EXPIRED_AT, video_from_key
from stillmotion.tasks.store import TaskStore
from tests.store_fixtures import FakeClock

HOUR = 3600.0
TTL_HOURS = 24.0
PRICE = 300_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _signer() -> UrlSigner:
    return UrlSigner(b"s" * 40, "http://test", 3600)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[tuple[str, Any]]:
    pytest.importorskip("aiobotocore")
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
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
            client.create_bucket(Bucket="retention")
            yield endpoint, client
            client.close()
        finally:
            server.stop()


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "files", _signer())
        return
    endpoint, _ = request.getfixturevalue("s3_server")
    from stillmotion.storage.s3 import S3Storage

    st = await S3Storage.open(
        f"s3://retention/{uuid.uuid4().hex}", _signer(), endpoint_url=endpoint, region="us-east-1"
    )
    try:
        yield st
    finally:
        await st.aclose()


async def exists(storage: Storage, key: str) -> bool:
    return any(k == key for k, _ in await storage.list_files(key.rsplit("/", 1)[0] + "/"))


async def finished(
    store: TaskStore, storage: Storage, key_id: str, *, account_id: str | None = None
) -> str:
    """A SUCCEEDED task with a stored video and a kept input (a data: URI)."""
    task_id = str(uuid.uuid4())
    image = f"inputs/{task_id}/image.png"
    request = {"prompt": "p", "duration": 2, "resolution": "720P", "audio": False,
               "image": {"url": None, "storage_key": image, "mime": "image/png"}}  # fmt: skip
    ask = Ask(account_id, key_id, PRICE * 2, hold=True) if account_id else None
    await storage.put_bytes(image, b"png")
    await store.create_task(
        task_id=task_id, key_id=key_id, model="wan2.6-i2v-flash", engine="motion",
        request=request, max_attempts=2, account_id=account_id, price=PRICE,
        quote=PRICE * 2, ask=ask,
    )  # fmt: skip
    claimed = await store.claim("w1", 30)
    assert claimed is not None and claimed.id == task_id
    video = f"videos/{task_id}-{claimed.attempts}.mp4"
    await storage.put_bytes(video, b"mp4 bytes")
    result = {"video_key": video, "fps": 24, "num_frames": 48, "usage": {"duration": 2}}
    assert await store.finish_success(task_id, "w1", result)
    return task_id


async def fresh(store: TaskStore, task_id: str) -> Any:
    store._cache.clear()
    return await store.get_task(task_id)


async def test_old_results_expire_young_ones_stay(
    store: TaskStore, storage: Storage, clock: FakeClock
) -> None:
    key = (await create_key(store, "k")).row
    old = await finished(store, storage, key.id)
    clock.advance(TTL_HOURS * HOUR - 60)
    young = await finished(store, storage, key.id)
    renderer = TaskRenderer(storage, result_ttl_seconds=TTL_HOURS * HOUR, clock=clock)
    before = renderer.body(await fresh(store, old), "r")["output"]
    assert "video_url" in before and "result_expired" not in before
    clock.advance(120)  # old: past its TTL, young: not
    # not yet swept: already no URL for the old one
    unswept = renderer.output(await fresh(store, old))
    assert "video_url" not in unswept and unswept["code"] == "ResultExpired"

    counts = await store.retention.sweep(storage, TTL_HOURS)
    assert counts.expired == 1 and counts.purged == 0
    assert not await exists(storage, f"videos/{old}-1.mp4")
    assert not await exists(storage, f"inputs/{old}/image.png")
    assert await exists(storage, f"videos/{young}-1.mp4")
    assert await exists(storage, f"inputs/{young}/image.png")

    row = await fresh(store, old)
    assert row.status.value == "SUCCEEDED" and row.result[EXPIRED_AT] == clock.now
    assert "result_expired" in [e["kind"] for e in await store.events(old)]
    # a renderer that knows no TTL (or a longer one) still sees the sweep's mark
    body = TaskRenderer(storage, clock=clock).body(row, "r")
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED" and out["result_expired"] is True
    assert "video_url" not in out and out["code"] == "ResultExpired"
    assert "24 hours" in out["message"] and "STILLMOTION_RESULT_TTL_HOURS" in out["message"]
    assert body["usage"] == {"duration": 2}
    young_out = renderer.output(await fresh(store, young))
    assert young_out["video_url"] and "result_expired" not in young_out
    # a second sweep finds nothing more
    assert (await store.retention.sweep(storage, TTL_HOURS)).expired == 0


async def test_batches_sweep_every_old_row(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "files", _signer())
    key = (await create_key(store, "k")).row
    ids = [await finished(store, storage, key.id) for _ in range(7)]
    clock.advance(TTL_HOURS * HOUR + 1)
    counts = await store.retention.sweep(storage, TTL_HOURS, batch=3)  # 3 + 3 + 1
    assert counts.expired == 7
    for task_id in ids:
        assert not (tmp_path / "files" / f"videos/{task_id}-1.mp4").exists()
        assert not (tmp_path / "files" / "inputs" / task_id).exists()
        assert (await fresh(store, task_id)).result[EXPIRED_AT] is not None


async def test_task_records_go_and_billing_still_verifies(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "files", _signer())
    account_id = await store.accounts.create("acme", 10_000_000)
    key = (await create_key(store, "acme", account_id=account_id)).row
    old = [await finished(store, storage, key.id, account_id=account_id) for _ in range(3)]
    clock.advance(2 * 86400)
    young = await finished(store, storage, key.id, account_id=account_id)
    clock.advance(86400 + 1)  # old: 3 days, young: 1 day
    assert await store.verify_billing() == {}
    counts = await store.retention.sweep(storage, TTL_HOURS, task_ttl_days=2, batch=2)
    assert counts.purged == 3 and counts.expired == 4  # young's result is past 24 h too
    for task_id in old:
        assert await fresh(store, task_id) is None
        assert await store.events(task_id) == []
        assert not (tmp_path / "files" / f"videos/{task_id}-1.mp4").exists()
    assert (await fresh(store, young)) is not None
    assert await store.verify_billing() == {}
    entries = await store.accounts.entries(account_id)
    assert {e["task_id"] for e in entries if e["kind"] == "capture"} == {*old, young}


async def test_purge_deletes_objects_not_yet_expired(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    """A task TTL shorter than the result TTL still leaves no object behind."""
    storage = LocalStorage(tmp_path / "files", _signer())
    key = (await create_key(store, "k")).row
    task_id = await finished(store, storage, key.id)
    clock.advance(2 * 86400)
    counts = await store.retention.sweep(storage, 1000.0, task_ttl_days=1)
    assert counts == type(counts)(expired=0, purged=1)
    assert await fresh(store, task_id) is None
    assert not (tmp_path / "files" / f"videos/{task_id}-1.mp4").exists()
    assert not (tmp_path / "files" / "inputs" / task_id).exists()


async def test_two_sweepers_at_once(store: TaskStore, clock: FakeClock, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", _signer())
    key = (await create_key(store, "k")).row
    ids = [await finished(store, storage, key.id) for _ in range(12)]
    clock.advance(TTL_HOURS * HOUR + 1)
    other = await TaskStore.open(str(store.url.render_as_string(hide_password=False)), clock=clock)
    try:
        a, b = await asyncio.gather(
            store.retention.sweep(storage, TTL_HOURS, batch=2),
            other.retention.sweep(storage, TTL_HOURS, batch=2),
        )
    finally:
        await other.close()
    assert a.expired + b.expired == 12  # each row marked exactly once
    for task_id in ids:
        assert not (tmp_path / "files" / f"videos/{task_id}-1.mp4").exists()
        kinds = [e["kind"] for e in await store.events(task_id)]
        assert kinds.count("result_expired") == 1


def test_video_keys_name_their_task() -> None:
    task_id = str(uuid.uuid4())
    assert video_from_key(f"videos/{task_id}-3.mp4") == task_id
    assert video_from_key(f"inputs/{task_id}/image.png") is None
    assert video_from_key("videos/x.mp4") is None


async def test_api_bodies_and_files_after_expiry(runtime: Any, client: Any) -> None:
    """Both task paths say expired without a URL; the URL handed out before answers 410."""
    made = await create_key(runtime.store, "api")
    auth = {"Authorization": f"Bearer {made.key}"}
    task_id = await finished(runtime.store, runtime.storage, made.row.id)
    before = (await client.get(f"/task/{task_id}", headers=auth)).json()["output"]
    url = before["video_url"]
    assert (await client.get(url)).status_code == 200
    await asyncio.sleep(0.01)
    counts = await runtime.store.retention.sweep(runtime.storage, 1e-6)  # 3.6 ms
    assert counts.expired == 1
    for path in (f"/task/{task_id}", f"/api/v1/tasks/{task_id}"):
        resp = await client.get(path, headers=auth)
        assert resp.status_code == 200
        out = resp.json()["output"]
        assert out["task_status"] == "SUCCEEDED" and out["result_expired"] is True
        assert out["code"] == "ResultExpired" and "video_url" not in out
    gone = await client.get(url)
    assert gone.status_code == 410
    body = gone.json()
    assert body["code"] == "ResultExpired" and body["request_id"] and body["message"]


async def test_housekeeping_sweep_runs_retention(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    from stillmotion.worker.housekeeping import Housekeeper, HousekeepingConfig

    storage = LocalStorage(tmp_path / "files", _signer())
    key = (await create_key(store, "k")).row
    task_id = await finished(store, storage, key.id)
    config = HousekeepingConfig(
        work_base=tmp_path / "work", result_ttl_hours=TTL_HOURS, task_ttl_days=3
    )
    keeper = Housekeeper(store, storage, "w-hk", [], config)
    await keeper.sweep()
    assert (tmp_path / "files" / f"videos/{task_id}-1.mp4").exists()
    clock.advance(TTL_HOURS * HOUR + 1)
    await keeper.sweep()
    assert not (tmp_path / "files" / f"videos/{task_id}-1.mp4").exists()
    assert (await fresh(store, task_id)).result[EXPIRED_AT] is not None
    clock.advance(3 * 86400)
    await keeper.sweep()
    assert await fresh(store, task_id) is None


async def test_an_open_hold_without_its_task_is_still_an_orphan(store: TaskStore) -> None:
    """The audit accepts a settled hold whose task retention deleted, nothing more."""
    import sqlalchemy as sa

    from stillmotion.tasks.schema import task_events, tasks

    account_id = await store.accounts.create("acme", 10_000_000)
    key = (await create_key(store, "acme", account_id=account_id)).row
    task_id = str(uuid.uuid4())
    await store.create_task(
        task_id=task_id, key_id=key.id, model="wan2.6-i2v-flash", engine="motion",
        request={"duration": 2}, max_attempts=1, account_id=account_id, price=PRICE,
        quote=PRICE * 2, ask=Ask(account_id, key.id, PRICE * 2, hold=True),
    )  # fmt: skip
    async with store._write.begin() as conn:
        await conn.execute(sa.delete(task_events).where(task_events.c.task_id == task_id))
        await conn.execute(sa.delete(tasks).where(tasks.c.id == task_id))
    problems = await store.verify_billing()
    assert [r["task_id"] for r in problems["orphan_entry"]] == [task_id]
