"""A worker whose claim is taken over while it renders, end to end on SQLite and PostgreSQL.

Two real :class:`Worker` objects share one store and one file storage; each renders with an
engine the test holds at a gate, and writes its own bytes as the video. The first worker's
claim is taken over while it renders or stores its video (declared dead while it was not, or
its lease expired); then the second claim succeeds and the first run ends, or the first run
ends while the second claim still renders (which the fence alone must stop). Whichever way
the first worker learns of the loss (its heartbeat, the check after the render, or the fenced
finish itself), its result is dropped: the task holds the second claim's result, the video
behind ``video_url`` has the second claim's bytes, and the events show both claims and one
success.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from stillmotion.domain import MediaRef, TaskStatus, VideoRequest
from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult, ProgressFn
from stillmotion.errors import EngineCanceled
from stillmotion.storage.local import LocalStorage
from stillmotion.storage.signing import UrlSigner
from stillmotion.tasks.store import TaskStore
from stillmotion.worker.housekeeping import HousekeepingConfig
from stillmotion.worker.runner import RunnerConfig
from stillmotion.worker.worker import Worker
from tests.store_fixtures import FakeClock, current

MODEL = "wan2.6-i2v-flash"
QUIET = 3600.0  # workers' registry heartbeat: nobody is declared dead by its age here
WAIT = 60.0  # a guard against a hang only; nothing here is timed
SHORT_LEASE = 1.5  # the runner's heartbeat writes every 0.5 s (real time)
LONG_LEASE = 600.0  # the runner's heartbeat writes once in ~200 s: not during the test


class GateEngine:
    """Renders ``video`` (its bytes as the video file) once the test opens ``gate``.

    ``honour_cancel``: stop with ``EngineCanceled`` as soon as the cancel signal is set (as
    the built-in engines do between steps); otherwise notice it but finish the render (an
    engine in a step it cannot interrupt).
    """

    name = "motion"
    needs_media = False

    def __init__(self, video: bytes, *, honour_cancel: bool = False) -> None:
        self.video = video
        self.honour_cancel = honour_cancel
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.saw_cancel = asyncio.Event()
        self.ended: str | None = None  # "returned" or "canceled"

    async def generate(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> EngineResult:
        self.started.set()
        gate = asyncio.create_task(self.gate.wait())
        canceled = asyncio.create_task(cancel.wait())
        try:
            await asyncio.wait({gate, canceled}, return_when=asyncio.FIRST_COMPLETED)
            if cancel.is_set:
                self.saw_cancel.set()
                if self.honour_cancel:
                    self.ended = "canceled"
                    raise EngineCanceled("canceled")
            await gate
        finally:
            gate.cancel()
            canceled.cancel()
        job.work_dir.mkdir(parents=True, exist_ok=True)  # a sweeper may have taken it
        path = job.work_dir / "video.mp4"
        path.write_bytes(self.video)
        self.ended = "returned"
        return EngineResult(
            video_path=path, width=64, height=48, fps=16, num_frames=33, has_audio=False
        )

    async def aclose(self) -> None:
        pass


class HeldStorage(LocalStorage):
    """Local storage whose ``put_file`` waits for ``release`` once it was entered."""

    def __init__(self, root: Path, signer: UrlSigner) -> None:
        super().__init__(root, signer)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def put_file(self, key: str, src: Path) -> int:
        self.entered.set()
        await self.release.wait()
        return await super().put_file(key, src)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())  # stands still unless a test moves it: no lease expires


class Pair:
    """Workers ``a`` (the first claim) and ``b`` (the one that takes over), stopped after."""

    def __init__(self, store: TaskStore, root: Path) -> None:
        self.store = store
        self.root = root
        self.signer = UrlSigner(b"s" * 32, "http://x", 3600)
        self.storage = LocalStorage(root / "files", self.signer)
        self.workers: list[Worker] = []

    def worker(
        self, name: str, engine: GateEngine, lease: float, storage: LocalStorage | None = None
    ) -> Worker:
        config = RunnerConfig(work_root=self.root / "work", lease_seconds=lease)
        keeping = HousekeepingConfig(work_base=self.root / "work", heartbeat_seconds=QUIET)
        worker = Worker(
            self.store, storage or self.storage, {"motion": engine}, config,
            concurrency=1, poll_interval=0.05, worker_id=name, housekeeping=keeping,
        )  # fmt: skip
        worker.start()
        self.workers.append(worker)
        return worker

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop(grace=1.0)


@pytest.fixture
async def pair(store: TaskStore, tmp_path: Path) -> AsyncIterator[Pair]:
    p = Pair(store, tmp_path)
    try:
        yield p
    finally:
        await p.stop()


async def new_task(store: TaskStore) -> str:
    request = VideoRequest(
        model=MODEL, prompt="a cat", negative_prompt="", image=MediaRef(url="http://x/a.png"),
        audio_source=None, resolution="720P", duration=2, audio=False, shot_type="single",
        seed=1, prompt_extend=False, watermark=False,
    )  # fmt: skip
    task_id = str(uuid.uuid4())
    await store.create_task(
        task_id=task_id, key_id="key-a", model=MODEL, engine="motion",
        request=request.to_json(), max_attempts=3,
    )  # fmt: skip
    return task_id


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` (bounded) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        assert loop.time() < deadline, f"not within {WAIT} s: {what}"
        await asyncio.sleep(0.02)


async def event_set(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), WAIT)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT} s: {what}") from None


async def declare_dead(store: TaskStore, worker_id: str, task_id: str) -> None:
    """Reclaim ``worker_id``'s tasks as a peer that judged it dead would (it is not)."""
    for _ in range(50):  # the row changes if the worker beat meanwhile: read it again
        (dead,) = [w for w in await store.workers.registered() if w.id == worker_id]
        done = await store.workers.reclaim(dead, "declared dead by the test")
        if done is not None:
            assert done.pending == [task_id] and done.failed == []
            return
    raise AssertionError(f"could not reclaim {worker_id}")


async def succeeded(store: TaskStore, task_id: str) -> bool:
    return (await current(store, task_id)).status is TaskStatus.SUCCEEDED


async def check_outcome(
    store: TaskStore,
    storage: LocalStorage,
    task_id: str,
    first: Worker,
    kinds: list[str],
    *,
    first_file_kept: bool = False,
) -> None:
    """The second claim's result stands and the first's is not the video; events show both
    claims and one success; the first claim is still fenced out."""
    assert await _idle(first)
    done = await current(store, task_id)
    assert done.status is TaskStatus.SUCCEEDED and done.worker_id == "B#1", done
    assert done.attempts == 2 and done.result is not None
    key = done.result["video_key"]
    assert key == f"videos/{task_id}-2.mp4"
    assert storage.signed_url(key).startswith(f"http://x/files/{key}?")  # what video_url is
    video = storage.local_path(key)
    assert video.read_bytes() == b"second claim's video"
    assert done.result["bytes"] == len(b"second claim's video")
    others = [p.read_bytes() for p in (storage.root / "videos").rglob("*") if p != video]
    # nothing stored by the first claim, or (taken over while storing) only its own file
    assert others == ([b"first claim's video"] if first_file_kept else []), others
    events = await store.events(task_id)
    assert [e["kind"] for e in events] == kinds, events
    claims = [e["detail"] for e in events if e["kind"] == "claimed"]
    assert claims == [{"attempt": 1, "worker": "A#1"}, {"attempt": 2, "worker": "B#1"}]
    assert await store.heartbeat(task_id, "A#1", 30.0) is None  # the first claim: fenced out


async def _idle(worker: Worker) -> bool:
    return worker.completed >= 1 and not worker.describe()["active"]


RECLAIMED = ["created", "claimed", "reclaimed", "claimed", "succeeded"]
EXPIRED = ["created", "claimed", "claimed", "succeeded"]
ORDERS = pytest.mark.parametrize(
    "second_first", [True, False], ids=["second-ends-first", "first-ends-first"]
)


async def start_second(pair: Pair, lease: float) -> GateEngine:
    """Worker B, once it renders the task (its claim RUNNING); its gate still closed."""
    second = GateEngine(b"second claim's video")
    pair.worker("B", second, lease)
    await event_set(second.started, "the second claim renders")
    return second


async def end_both(
    store: TaskStore,
    task_id: str,
    first: Worker,
    second: GateEngine,
    end_first: Callable[[], None],
    second_first: bool,
) -> None:
    """Let the second claim finish, then the first run end; or the first run end while the
    second claim still renders (it must change nothing), then the second claim finish."""
    if second_first:
        second.gate.set()
        await until("the second claim succeeded", lambda: succeeded(store, task_id))
    end_first()
    await until("the first worker's run ended", lambda: _idle(first))
    if not second_first:
        mid = await current(store, task_id)
        assert mid.status is TaskStatus.RUNNING and mid.worker_id == "B#1", mid
        assert mid.result is None
        second.gate.set()
        await until("the second claim succeeded", lambda: succeeded(store, task_id))


def dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "result dropped" in r.getMessage()]


@ORDERS
@pytest.mark.parametrize("honour_cancel", [False, True], ids=["renders-on", "stops"])
async def test_a_worker_declared_dead_while_rendering_drops_its_result(
    store: TaskStore,
    pair: Pair,
    honour_cancel: bool,
    second_first: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its heartbeat sees the loss and cancels the render; an engine that stops ends the run,
    one that renders on has its result dropped by the runner (``lease lost``)."""
    caplog.set_level(logging.WARNING, "stillmotion.worker")
    task_id = await new_task(store)
    first = GateEngine(b"first claim's video", honour_cancel=honour_cancel)
    a = pair.worker("A", first, SHORT_LEASE)
    await event_set(first.started, "the first worker renders")
    await declare_dead(store, "A", task_id)
    second = await start_second(pair, SHORT_LEASE)
    await event_set(first.saw_cancel, "the first worker's heartbeat saw the loss")
    await end_both(store, task_id, a, second, first.gate.set, second_first)
    await check_outcome(store, pair.storage, task_id, a, RECLAIMED)
    assert first.ended == ("canceled" if honour_cancel else "returned")
    lost = [f"task {task_id}: lease lost; result dropped"]
    assert dropped(caplog) == ([] if honour_cancel else lost)


@ORDERS
async def test_a_render_that_ends_after_its_lease_expired_is_dropped(
    store: TaskStore,
    pair: Pair,
    clock: FakeClock,
    second_first: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease expired and another worker claimed the task before the first worker's
    heartbeat wrote again: the check at the render's end finds the loss, nothing is stored."""
    caplog.set_level(logging.WARNING, "stillmotion.worker")
    task_id = await new_task(store)
    first = GateEngine(b"first claim's video")
    a = pair.worker("A", first, LONG_LEASE)
    await event_set(first.started, "the first worker renders")
    clock.advance(LONG_LEASE + 1)  # the first lease has expired
    second = await start_second(pair, LONG_LEASE)
    await end_both(store, task_id, a, second, first.gate.set, second_first)
    assert not first.saw_cancel.is_set()  # the first heartbeat did not write meanwhile
    await check_outcome(store, pair.storage, task_id, a, EXPIRED)
    assert first.ended == "returned"
    assert dropped(caplog) == [f"task {task_id}: lease lost; result dropped"]


@ORDERS
async def test_a_claim_taken_over_while_storing_its_video_is_fenced_out(
    store: TaskStore,
    pair: Pair,
    clock: FakeClock,
    tmp_path: Path,
    second_first: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first worker still held the claim when its render ended; its lease expires and the
    task is claimed while it stores the video: its fenced finish changes nothing, and its
    file (one per claim) is not the task's video."""
    caplog.set_level(logging.WARNING, "stillmotion.worker")
    task_id = await new_task(store)
    first = GateEngine(b"first claim's video")
    first.gate.set()
    held = HeldStorage(tmp_path / "files", pair.signer)
    a = pair.worker("A", first, LONG_LEASE, storage=held)
    await event_set(held.entered, "the first worker stores its video")
    clock.advance(LONG_LEASE + 1)  # the first lease has expired
    second = await start_second(pair, LONG_LEASE)
    await end_both(store, task_id, a, second, held.release.set, second_first)
    msg = f"task {task_id}: finished after losing its lease; result dropped"
    assert dropped(caplog) == [msg]
    await check_outcome(store, pair.storage, task_id, a, EXPIRED, first_file_kept=True)
