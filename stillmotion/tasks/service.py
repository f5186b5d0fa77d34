"""TaskService: submit, get, list and cancel. The only thing the API routes call.

A submit is priced here (``money.PriceList``: the caller's account's price group) and
quoted for its requested duration; the store's submit transaction admits it (limits, and
with billing on a hold of the quote) or raises the refusal. An ``Idempotency-Key`` answers
a repeated submit with its first task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import sqlalchemy as sa

from stillmotion.domain import CANCELABLE, MediaRef, TaskStatus, VideoRequest, is_clean_text
from stillmotion.errors import InvalidParameter, UnsupportedOperation
from stillmotion.ids import random_bytes
from stillmotion.money import PriceList, cost_micros
from stillmotion.storage.base import Storage
from stillmotion.tasks.admission import Ask
from stillmotion.tasks.body import INLINE_BYTES, parse_body, parse_chunks
from stillmotion.tasks.rows import ApiKeyRow
from stillmotion.tasks.store import TaskRow, TaskStore
from stillmotion.tasks.validation import Validated, check_submit, decode_media
from stillmotion.tasks.webhooks import check_callback_url

log = logging.getLogger("stillmotion.tasks")
T = TypeVar("T")

#: Threads (in this process) that parse big bodies and decode/probe data URIs at once; more
#: submits wait their turn. Half the cores, at most 4: the event loop keeps a core.
MEDIA_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
#: The media threads' nice value (Linux: per thread): when the machine is busy, the event
#: loop's thread gets the CPU first and a big submit never holds up the small requests.
MEDIA_NICE = 10
#: The interpreter's switch interval once media threads run (CPython's default: 5 ms). A
#: thread in a Python-level loop (image and audio probing) keeps the GIL that long each time
#: the event loop asks for it, and the loop asks after every wake-up.
SWITCH_INTERVAL = 0.001
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not on Linux: a plain thread
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MEDIA_NICE)


def media_pool() -> ThreadPoolExecutor:
    """The process's media threads (``MEDIA_THREADS``, at ``MEDIA_NICE``)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
            _pool = ThreadPoolExecutor(
                MEDIA_THREADS, thread_name_prefix="stillmotion-media", initializer=_lower_priority
            )
        return _pool


#: the longest ``Idempotency-Key`` header value taken
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_CONFLICT = (
    "This Idempotency-Key was used in the last 24 hours with a different request body "
    "(task {task_id}); send the same body to get that task again, or use a new key."
)

CANCEL_REFUSED = "Failed to cancel the task, please confirm if the task is in PENDING status."


def check_idempotency_key(value: str) -> None:
    if not value.strip() or len(value) > IDEMPOTENCY_KEY_MAX or not is_clean_text(value):
        raise InvalidParameter(
            f"The Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_MAX} characters."
        )


def new_task_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Time-ordered ids are appended at the end of the task table's primary-key index and of the
    events' task index instead of landing on a random page of each, so a commit writes fewer
    pages; the random bits keep ids unguessable.
    """
    rand = int.from_bytes(random_bytes(10), "big")  # 12 bits for rand_a, 62 for rand_b
    rand_a, rand_b = rand >> 68, rand & ((1 << 62) - 1)
    millis = time.time_ns() // 1_000_000
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


def input_key(task_id: str, name: str) -> str:
    """Where a task's decoded data: URIs live: everything under ``inputs/<task_id>/``."""
    return f"inputs/{task_id}/{name}"


def video_key(task_id: str, attempt: int) -> str:
    """Where an attempt's video lives: one file per claim, so a worker that lost its lease
    never overwrites the video of the claim that took over (its fenced finish then fails)."""
    return f"videos/{task_id}-{attempt}.mp4"


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        storage: Storage,
        routes: Mapping[str, str],
        *,
        default_engine: str = "motion",
        max_attempts: int = 3,
        cancel_running: bool = False,
        on_submit: Callable[[TaskRow], None] | None = None,
        prices: PriceList | None = None,
        billing: bool = False,
        engine_check: Callable[[str, VideoRequest], None] | None = None,
    ):
        self.store = store
        self.storage = storage
        self.routes = dict(routes)
        self.default_engine = default_engine
        self.max_attempts = max_attempts
        self.cancel_running = cancel_running
        self._on_submit = on_submit
        self.prices = prices or PriceList()
        self.billing = billing
        #: refuses (InvalidParameter) what the task's engine cannot make: media it cannot
        #: use, a template it does not draw (the runtime asks the engine's class)
        self.engine_check = engine_check

    def engine_for(self, model: str) -> str:
        return self.routes.get(model, self.default_engine)

    def set_on_submit(self, callback: Callable[[TaskRow], None] | None) -> None:
        self._on_submit = callback

    async def off_loop(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in one of the media threads (``media_pool``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(media_pool(), functools.partial(func, *args))

    async def parse(self, chunks: list[bytes]) -> Any:
        """A submit body's JSON from its chunks (see ``tasks/body.py``); a big body is joined
        and parsed in a thread."""
        if len(chunks) == 1 and len(chunks[0]) <= INLINE_BYTES:
            return parse_body(chunks[0])
        if sum(map(len, chunks)) <= INLINE_BYTES:
            return parse_body(b"".join(chunks))
        return await self.off_loop(parse_chunks, chunks)

    async def submit(
        self,
        key: ApiKeyRow,
        body: Any,
        *,
        idempotency: tuple[str, str] | None = None,
        callback: str | None = None,
        endpoint: str | None = None,
    ) -> TaskRow:
        """Validate, price and create a task; ``idempotency`` is ``(Idempotency-Key, hash of
        the body)``: a key seen in the last 24 h answers its first task again. ``callback``:
        the ``X-Stillmotion-Callback`` header, a URL to POST the finished task to
        (``tasks/webhooks.py``; checked like ``img_url``, 400 naming the header).
        ``endpoint``: the DashScope-native path it came to (``validation.NATIVE_PATHS``)."""
        if callback is not None:
            try:
                check_callback_url(callback)
            except InvalidParameter as exc:  # InvalidURL is the contract's, for its fields
                raise InvalidParameter(exc.message) from None
        if idempotency is not None:
            check_idempotency_key(idempotency[0])
            first = await self._replay(key, idempotency)
            if first is not None:
                return first
        validated = await self.validate(body, endpoint)
        task_id = new_task_id()
        price, ask = self.quote(key, validated)
        try:
            request = await self._keep_blobs(task_id, validated)
            row = await self.store.create_task(
                task_id=task_id,
                key_id=key.id,
                model=validated.spec.name,
                engine=self.engine_for(validated.spec.name),
                request=request,
                max_attempts=self.max_attempts,
                account_id=key.account_id,
                price=price,
                quote=ask.quote,
                ask=ask,
                idempotency=idempotency,
                callback_url=callback,
            )
        except sa.exc.IntegrityError:
            first = await self._replay(key, idempotency) if idempotency else None
            if validated.blobs:
                await self._drop_inputs(task_id)
            if first is None:
                raise
            return first  # a concurrent submit with the same Idempotency-Key won
        except BaseException:
            if validated.blobs:
                await self._drop_inputs(task_id)
            raise
        if self._on_submit is not None:
            self._on_submit(row)
        return row

    def quote(self, key: ApiKeyRow, validated: Validated) -> tuple[int, Ask]:
        """The per-second price (micros) for the caller, and the admission ask for the
        requested (or default) duration."""
        req = validated.request
        price = self.prices.price(validated.spec, req.resolution, req.audio, key.price_group)
        seconds = int(req.duration)
        quote = cost_micros(price, seconds * 1000)
        account = key.account_id or key.id
        return price, Ask(
            account, key.id, quote, self.billing, self.prices.currency, price, seconds
        )

    async def _replay(self, key: ApiKeyRow, idempotency: tuple[str, str]) -> TaskRow | None:
        seen = await self.store.idempotent_task(key.id, idempotency[0])
        if seen is None:
            return None
        body_hash, task_id = seen
        if body_hash != idempotency[1]:
            raise InvalidParameter(IDEMPOTENCY_CONFLICT.format(task_id=task_id))
        return await self.store.get_task(task_id)

    async def validate(self, body: Any, endpoint: str | None = None) -> Validated:
        """The body checked for its model and its engine, data URIs decoded (off the loop)."""
        validated = check_submit(body, endpoint)
        if self.engine_check is not None:
            self.engine_check(self.engine_for(validated.spec.name), validated.request)
        if validated.pending:
            validated = await self.off_loop(decode_media, validated)
        return validated

    async def _keep_blobs(self, task_id: str, validated: Validated) -> dict[str, Any]:
        """Store decoded data: URIs under ``inputs/<task_id>/`` and point the request at them."""
        request = validated.request
        if not validated.blobs:
            return request.to_json()
        for blob in validated.blobs:
            await self.storage.put_bytes(input_key(task_id, blob.name), blob.data)

        def kept(ref: MediaRef | None) -> MediaRef | None:
            if ref is None or not ref.storage_key:
                return ref
            return MediaRef(storage_key=input_key(task_id, ref.storage_key), mime=ref.mime)

        return replace(
            request,
            image=kept(request.image),
            last_frame=kept(request.last_frame),
            audio_source=kept(request.audio_source),
        ).to_json()

    async def _drop_inputs(self, task_id: str) -> None:
        """Best effort: remove what ``_keep_blobs`` wrote for a task that was not created."""
        with contextlib.suppress(OSError):
            await self.storage.delete_prefix(input_key(task_id, ""))
            log.debug("removed the inputs of task %s, which was not created", task_id)

    async def get(self, key_id: str, task_id: str) -> TaskRow | None:
        """The task, or None when it does not exist or belongs to another key."""
        if not is_clean_text(task_id):
            return None  # no task has such an id; PostgreSQL would refuse the query
        row = await self.store.get_task(task_id)
        if row is None or row.key_id != key_id:
            return None
        return row

    async def cancel(self, key_id: str, task_id: str) -> None:
        """Cancel a PENDING task. With ``cancel_running`` (an extension, off by default as
        upstream), a RUNNING task is asked to stop and ends CANCELED when its engine does."""
        if not is_clean_text(task_id):
            raise UnsupportedOperation(CANCEL_REFUSED)  # as for any unknown task
        row = await self.store.cancel_pending(task_id, key_id)
        if row is not None and row.status is TaskStatus.CANCELED:
            return
        if await self._may_stop(key_id, task_id) and await self.store.request_cancel(
            task_id, key_id
        ):
            return
        raise UnsupportedOperation(CANCEL_REFUSED)

    async def _may_stop(self, key_id: str, task_id: str) -> bool:
        """A RUNNING task may be stopped when allowed for all, or when its engine says it is
        still cleanly cancelable (a relayed task still PENDING upstream)."""
        if self.cancel_running:
            return True
        row = await self.get(key_id, task_id)
        return row is not None and bool(row.engine_state.get(CANCELABLE))

    async def list(
        self,
        key_id: str,
        *,
        limit: int = 10,
        offset: int = 0,
        status: str | None = None,
        model: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> tuple[list[TaskRow], int]:
        return await self.store.list_tasks(
            key_id, limit=limit, offset=offset, status=status, model=model, start=start, end=end
        )
