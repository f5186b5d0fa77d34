"""The webhook sender: a worker's loop that delivers the outbox (``tasks/webhooks.py``).

Each round claims due deliveries with a lease, renders each task's body as ``GET
/task/{id}`` returns it (``render``, handed in by ``runtime.py``: this layer does not import
the API), signs it per Standard Webhooks and POSTs it:

* headers ``webhook-id`` (the delivery's id, the same on every attempt), ``webhook-timestamp``
  (epoch seconds of this attempt) and ``webhook-signature`` (``v1,`` + base64 of
  HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the secret's base64-decoded bytes);
* the URL passes the media fetch's SSRF guard (``media/fetch.py``: every resolved address
  checked, the connection pinned to a checked one, no redirects followed); a refused
  address fails the delivery at once, without a request;
* the whole attempt has ``timeout`` seconds, and at most ``max_response_bytes`` of the answer
  are read;
* a 2xx answer delivers it; anything else is retried after ``backoff × 1, 6, 24, 120, 360,
  720, 1440`` (5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then every 2 h with the default 5 s)
  until ``max_age`` seconds after the task ended, then the delivery is ``failed``.

At least once: a sender that dies mid-POST leaves its lease to expire and another sends again,
with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from stillmotion import errors
from stillmotion.media.fetch import FetchPolicy, check_host, check_url_syntax, pinned_request
from stillmotion.metrics import record_webhook_delivery
from stillmotion.tasks.rows import TaskRow
from stillmotion.tasks.store import TaskStore
from stillmotion.tasks.webhooks import DELIVERED, FAILED, PENDING, SECRET_PREFIX, DeliveryJob

log = logging.getLogger("stillmotion.webhooks")

#: the retry delays, in units of ``backoff``; the last one repeats
SCHEDULE = (1, 6, 24, 120, 360, 720, 1440)
USER_AGENT = "stillmotion-webhooks/1"
#: ``render(row, request_id)``: the task's body as ``GET /task/{id}`` returns it
Render = Callable[[TaskRow, str], dict[str, Any]]


@dataclass(frozen=True)
class WebhookConfig:
    timeout: float = 10.0  # one attempt, DNS to the last byte read
    max_age: float = 24 * 3600.0  # retried until this long after the task ended
    backoff: float = 5.0  # the first retry's delay
    poll_interval: float = 1.0
    allow_private: bool = False
    max_response_bytes: int = 64 * 1024
    batch: int = 16  # deliveries claimed (and sent side by side) per round


def retry_delay(backoff: float, failures: int) -> float:
    """The delay after the ``failures``-th failed attempt (1-based)."""
    return backoff * SCHEDULE[min(max(failures, 1), len(SCHEDULE)) - 1]


def _outcome(status: str, error: str | None, permanent: bool) -> str:
    """The ``stillmotion_webhook_deliveries_total`` label of one attempt."""
    if error is None:
        return "delivered"
    if permanent:
        return "refused"
    return "failed" if status == PENDING else "gave_up"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (Standard Webhooks, ``v1``)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class _Permanent(Exception):
    """Not worth retrying: the URL is refused, the endpoint is gone."""


class WebhookSender:
    def __init__(
        self, store: TaskStore, render: Render, config: WebhookConfig, sender_id: str
    ) -> None:
        self.store = store
        self.render = render
        self.config = config
        self.sender_id = sender_id
        self._rounds = 0
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self.policy = FetchPolicy(
            allow_private=config.allow_private,
            timeout=config.timeout,
            max_redirects=0,
            max_bytes=config.max_response_bytes,
        )

    def wake(self, *_: Any) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; a database hiccup is logged and the loop goes on."""
        try:
            while True:
                try:
                    sent = await self.deliver_due()
                except Exception:
                    log.exception("webhook round failed")
                    sent = 0
                if not sent:
                    self._wake.clear()
                    # asyncio.timeout, not wait_for: on Python 3.11 a cancel that comes as
                    # wait_for times out is turned into TimeoutError (swallowed here), and
                    # the loop would never stop
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.config.poll_interval):
                            await self._wake.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver_due(self) -> int:
        """One round: claim due deliveries and send them side by side; how many."""
        hooks = self.store.webhooks
        if not await hooks.any_due():
            return 0
        self._rounds += 1
        claim_id = f"{self.sender_id}#w{self._rounds}"
        lease = self.config.timeout + 30.0
        jobs = await hooks.claim(claim_id, lease, self.config.batch)
        await asyncio.gather(*(self._deliver(job) for job in jobs))
        return len(jobs)

    async def _deliver(self, job: DeliveryJob) -> None:
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        permanent = False
        try:
            status_code = await self._attempt(job)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except _Permanent as exc:
            error, permanent = str(exc), True
        except errors.InvalidURL as exc:  # the SSRF guard refused the address
            error, permanent = exc.message, True
        except errors.ServiceError as exc:  # the name did not resolve
            error = exc.message
        except TimeoutError:
            error = f"timed out after {self.config.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")
        except Exception as exc:  # a bug here must not leave the delivery leased for good
            log.exception("webhook %s for task %s: attempt failed", job.id, job.task_id)
            error = f"internal error: {type(exc).__name__}"
        duration_ms = (time.monotonic() - started) * 1000
        now = self.store.now()
        next_at = None
        if error is None:
            status = DELIVERED
        elif permanent:
            status = FAILED
        else:
            next_at = now + retry_delay(self.config.backoff, job.attempts + 1)
            status = PENDING if next_at <= job.created_at + self.config.max_age else FAILED
            next_at = next_at if status == PENDING else None
        await self.store.webhooks.record(
            job, at=now, duration_ms=duration_ms, status_code=status_code, error=error,
            status=status, next_at=next_at,
        )  # fmt: skip
        record_webhook_delivery(_outcome(status, error, permanent))
        level = logging.INFO if status != PENDING else logging.DEBUG
        log.log(level, "webhook %s for task %s: %s%s", job.id, job.task_id, status,
                f" ({error})" if error else "")  # fmt: skip

    async def _attempt(self, job: DeliveryJob) -> int:
        if job.refusal is not None or job.secret is None:
            raise _Permanent(job.refusal or "no secret to sign with")
        row = await self.store.get_task(job.task_id)
        if row is None:
            raise _Permanent(f"task {job.task_id} no longer exists")
        body = orjson.dumps(self.render(row, job.id))
        stamp = int(self.store.now())
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "webhook-id": job.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(job.secret, job.id, stamp, body),
        }
        async with asyncio.timeout(self.config.timeout):
            return await self._post(job.url, headers, body)

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        check_url_syntax(url, "the webhook URL")
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await check_host(host, port, self.policy)
        client = self._http()
        for i, address in enumerate(addresses):
            request = pinned_request(client, "POST", parsed, address, headers=headers,
                                     content=body)  # fmt: skip
            try:
                response = await client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError:
                if i + 1 < len(addresses):
                    continue
                raise
            try:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= self.config.max_response_bytes:
                        break  # the answer's status is what counts; the rest is not read
            finally:
                await response.aclose()
            return response.status_code
        raise errors.InputDownloadFailed(f"host {host} has no addresses")  # pragma: no cover

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=httpx.Timeout(self.config.timeout)
            )
        return self._client
