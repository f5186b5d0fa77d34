"""A property test of the money: random sequences of submits, claims, finishes (some of them
duplicated or stale), failures, cancels, top-ups and crashed workers against the real store,
on SQLite and PostgreSQL; after every step the books must balance (``verify_billing``) and
the account must hold exactly what a plain model of the rules says."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stillmotion.errors import Arrearage
from stillmotion.money import cost_micros
from stillmotion.tasks.admission import Ask
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.store import TaskStore
from tests.store_fixtures import FakeClock, database_url

T = TypeVar("T")
PRICE = 300_000  # 0.30 a second
LEASE = 10.0
MAX_ATTEMPTS = 2


@dataclass
class Expected:
    """What the model says a task is."""

    status: str  # PENDING RUNNING SUCCEEDED FAILED CANCELED
    hold: int
    worker: str | None = None
    attempts: int = 0
    expired: bool = False  # its worker crashed: the lease ran out (the worker may still finish)


IDLE = Expected("REFUSED", 0)


class World:
    """One store and one event loop for a whole test (every example makes its own account)."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.runner = asyncio.Runner()
        self.clock = FakeClock()
        self._db = database_url(backend, tmp_path)
        url = self.run(self._db.__aenter__())
        self.store = self.run(TaskStore.open(url, clock=self.clock))
        self.run(self.store.upgrade())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        self.run(self.store.close())
        self.run(self._db.__aexit__(None, None, None))
        self.runner.close()


class Books(RuleBasedStateMachine):
    world: World
    tasks = Bundle("tasks")

    @initialize(
        balance=st.sampled_from([0, 1_000_000, 3_000_000, 20_000_000]) | st.integers(0, 9_000_000)
    )
    def open_account(self, balance: int) -> None:
        self.store = self.world.store
        self.clock = self.world.clock
        self.account = self.world.run(self.store.accounts.create("prop", balance))
        # this example's own engine: claims never see an earlier example's tasks (the store
        # is shared), so a replayed example behaves exactly as it did the first time
        self.engine = f"prop-{self.account}"
        self.key = self.world.run(create_key(self.store, "prop", account_id=self.account)).row
        self.balance, self.model = balance, dict[str, Expected]()
        self.refs: set[str] = set()
        self.drawn: list[str] = []  # every task id submitted, accepted or not, in order

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.world.run(coro)

    @property
    def held(self) -> int:
        return sum(t.hold for t in self.model.values() if t.status in ("PENDING", "RUNNING"))

    @rule(target=tasks, seconds=st.integers(1, 6))
    def submit(self, seconds: int) -> str:
        quote, task_id = PRICE * seconds, str(uuid.uuid4())
        self.clock.advance(0.001)  # distinct creation times: claims take tasks in this order
        self.drawn.append(task_id)
        ask = Ask(self.account, self.key.id, quote, hold=True)
        expect_ok = self.balance - self.held >= quote
        try:
            self.run(self.store.create_task(
                task_id=task_id, key_id=self.key.id, model="wan2.6-i2v-flash", engine=self.engine,
                request={"duration": seconds}, max_attempts=MAX_ATTEMPTS,
                account_id=self.account, price=PRICE, quote=quote, ask=ask,
            ))  # fmt: skip
        except Arrearage:
            assert not expect_ok
            return task_id
        assert expect_ok
        self.model[task_id] = Expected("PENDING", quote)
        return task_id

    @precondition(lambda self: any(self._claimable(t) for t in self.model.values()))
    @rule(worker=st.sampled_from(["w1", "w2"]))
    def claim(self, worker: str) -> None:
        row = self.run(self.store.claim(worker, LEASE, engines=[self.engine]))
        assert row is not None and row.id in self.model
        t = self.model[row.id]
        assert self._claimable(t)
        t.status, t.worker, t.attempts, t.expired = "RUNNING", worker, t.attempts + 1, False

    def _claimable(self, t: Expected) -> bool:
        return t.status == "PENDING" or (t.status == "RUNNING" and t.expired)

    def _running(self, data: st.DataObject, stray: bool) -> str:
        """A RUNNING task of the model, or (``stray``) any task drawn so far."""
        running = [i for i in self.drawn if self.model.get(i, IDLE).status == "RUNNING"]
        if stray or not running:
            return data.draw(st.sampled_from(self.drawn))
        return data.draw(st.sampled_from(running))

    def _any_running(self) -> bool:
        return any(t.status == "RUNNING" for t in self.model.values())

    @precondition(lambda self: self.drawn)
    @rule(data=st.data(), seconds=st.integers(0, 7), twice=st.booleans())
    def stray_finish(self, data: st.DataObject, seconds: int, twice: bool) -> None:
        """A finish of any task: not running, refused at submit, or by the wrong worker."""
        self.succeed(data, seconds, twice, stray=True)

    @precondition(_any_running)
    @rule(data=st.data(), seconds=st.integers(0, 7), twice=st.booleans(), stray=st.just(False))
    def succeed(self, data: st.DataObject, seconds: int, twice: bool, stray: bool) -> None:
        """A finish by its worker, the other worker, a stale one, or of a task not running."""
        task_id = self._running(data, stray)
        result = {"fps": 16, "num_frames": 16 * seconds}
        for worker in ("w1", "w2"):
            done = self.run(self.store.finish_success(task_id, worker, result))
            t = self.model.get(task_id)
            owns = t is not None and t.status == "RUNNING" and t.worker == worker
            assert done == owns
            if done and t is not None:
                t.status = "SUCCEEDED"
                self.balance -= cost_micros(PRICE, seconds * 1000)
                if twice:  # a duplicate finish: refused, nothing moves
                    assert not self.run(self.store.finish_success(task_id, worker, result))

    @precondition(lambda self: self.drawn)
    @rule(data=st.data(), retry=st.booleans(), stray=st.sampled_from([False, False, True]))
    def fail(self, data: st.DataObject, retry: bool, stray: bool) -> None:
        task_id = self._running(data, stray)
        t = self.model.get(task_id)
        worker = t.worker if t is not None and t.worker else "w2"
        if retry:
            done = self.run(self.store.retry_later(task_id, worker, 0.0, "Test", "again"))
        else:
            done = self.run(self.store.finish_failure(task_id, worker, "Test", "bad"))
        assert done == (t is not None and t.status == "RUNNING" and t.worker == worker)
        if done and t is not None:
            again = retry and t.attempts < MAX_ATTEMPTS
            t.status, t.worker = ("PENDING" if again else "FAILED"), None

    @rule(task_id=tasks)
    def cancel(self, task_id: str) -> None:
        row = self.run(self.store.cancel_pending(task_id, self.key.id))
        t = self.model.get(task_id)
        assert (row is not None) == (t is not None and t.status == "PENDING")
        if row is not None and t is not None:
            t.status = "CANCELED"

    @rule(
        amount=st.sampled_from([300_000, 2_000_000]) | st.integers(1, 5_000_000),
        ref=st.sampled_from([None, "a", "b"]),
    )
    def top_up(self, amount: int, ref: str | None) -> None:
        applied = self.run(self.store.accounts.move(self.account, amount, ref=ref))
        assert applied == (ref is None or ref not in self.refs)
        if applied:
            self.balance += amount
        if ref is not None:
            self.refs.add(ref)

    @precondition(lambda self: any(t.status == "RUNNING" for t in self.model.values()))
    @rule()
    def workers_crash(self) -> None:
        """Every worker stalls: leases run out; tasks with attempts left are claimable again
        (until then their stale worker may still finish them), the others are reaped."""
        self.clock.advance(LEASE + 1)
        self.run(self.store.reap_expired())
        for t in self.model.values():
            if t.status == "RUNNING":
                t.expired = True
                if t.attempts >= MAX_ATTEMPTS:
                    t.status, t.worker = "FAILED", None

    @rule(task_id=consumes(tasks))
    def forget(self, task_id: str) -> None:
        """Keep the bundle small: stop drawing this task (it stays in the model)."""

    def teardown(self) -> None:
        """Leave no live task to the next example (it shares the store)."""
        for task_id, t in self.model.items():
            if t.status == "PENDING":
                self.run(self.store.cancel_pending(task_id, self.key.id))
            elif t.status == "RUNNING" and t.worker:
                self.run(self.store.finish_failure(task_id, t.worker, "Test", "teardown"))

    @invariant()
    def books_balance(self) -> None:
        if not hasattr(self, "account"):
            return
        failed = {k: v for k, v in self.run(self.store.verify_billing()).items() if v}
        assert failed == {}
        account = self.run(self.store.accounts.get(self.account))
        assert account is not None
        assert (account.balance, account.held) == (self.balance, self.held)
        for task_id, t in self.model.items():
            row = self.run(self.store.get_task(task_id))
            assert row is not None and row.status.value == t.status


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = World(request.param, tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_the_books_balance_after_any_sequence(world: World) -> None:
    Books.world = world
    run_state_machine_as_test(
        Books,
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,  # the same sequences on every run: a failure reproduces
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
