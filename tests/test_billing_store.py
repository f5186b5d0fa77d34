"""The store's money on both databases, with a hand-moved clock: timed-out tasks released,
``max_concurrent`` of an account and of a key enforced at claim (waiting, not refused),
duplicate finishes settling nothing, and ``verify_billing`` naming a tampered balance."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from stillmotion.tasks.admission import Ask
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.rows import ApiKeyRow
from stillmotion.tasks.schema import accounts
from stillmotion.tasks.store import TaskRow, TaskStore
from tests.store_fixtures import FakeClock

PRICE = 300_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def funded(store: TaskStore, balance: int = 10_000_000) -> tuple[str, ApiKeyRow]:
    account_id = await store.accounts.create("acme", balance)
    return account_id, (await create_key(store, "acme", account_id=account_id)).row


async def held_task(store: TaskStore, key: ApiKeyRow, seconds: int = 5) -> TaskRow:
    assert key.account_id is not None
    quote = PRICE * seconds
    return await store.create_task(
        task_id=str(uuid.uuid4()), key_id=key.id, model="wan2.6-i2v-flash", engine="motion",
        request={"duration": seconds}, max_attempts=1, account_id=key.account_id, price=PRICE,
        quote=quote, ask=Ask(key.account_id, key.id, quote, hold=True),
    )  # fmt: skip


async def test_a_timed_out_task_is_released(store: TaskStore, clock: FakeClock) -> None:
    account_id, key = await funded(store)
    task = await held_task(store, key)
    assert await store.claim("w1", lease_seconds=10) is not None
    clock.advance(11)  # the worker stopped renewing: no attempts left, so it is reaped
    assert await store.reap_expired() == 1
    account = await store.accounts.get(account_id)
    assert account is not None and (account.balance, account.held) == (10_000_000, 0)
    row = await store.get_task(task.id)
    assert row is not None and (row.status.value, row.cost) == ("FAILED", 0)
    assert not await store.finish_success(task.id, "w1", {"fps": 16, "num_frames": 80})
    kinds = Counter(e["kind"] for e in await store.accounts.entries(account_id))
    assert kinds == {"topup": 1, "hold": 1, "release": 1}  # the late finish settled nothing
    assert not any((await store.verify_billing()).values())


@pytest.mark.parametrize("on", ["account", "key"])
async def test_max_concurrent_keeps_tasks_pending(store: TaskStore, on: str) -> None:
    account_id, key = await funded(store)
    await store.accounts.set(account_id, key_id=key.id if on == "key" else None, max_concurrent=2)
    tasks = [await held_task(store, key) for _ in range(3)]
    claimed = [await store.claim("w1", lease_seconds=30) for _ in range(3)]
    assert [c is not None for c in claimed] == [True, True, False]  # the third waits
    running = {c.id for c in claimed if c is not None}
    (waiting,) = {t.id for t in tasks} - running
    row = await store.get_task(waiting)
    assert row is not None and row.status.value == "PENDING"
    assert await store.finish_success(running.pop(), "w1", {"fps": 16, "num_frames": 48})
    again = await store.claim("w1", lease_seconds=30)  # a slot is free: the third runs
    assert again is not None and again.id == waiting


async def test_another_keys_tasks_are_not_held_back(store: TaskStore) -> None:
    account_id, key = await funded(store)
    await store.accounts.set(account_id, key_id=key.id, max_concurrent=1)
    other = (await create_key(store, "second", account_id=account_id)).row
    await held_task(store, key)
    await held_task(store, key)
    await held_task(store, other)
    claimed = [await store.claim("w1", lease_seconds=30) for _ in range(3)]
    assert sorted(c.key_id for c in claimed if c is not None) == sorted([key.id, other.id])


async def test_verify_names_a_tampered_balance(store: TaskStore) -> None:
    account_id, key = await funded(store)
    await held_task(store, key)
    assert not any((await store.verify_billing()).values())
    async with store._write.begin() as conn:  # what a hand-edited database looks like
        await conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == account_id)
            .values(balance=accounts.c.balance + 1)
        )
    problems = {k: v for k, v in (await store.verify_billing()).items() if v}
    assert list(problems) == ["balance"] and problems["balance"][0]["id"] == account_id
