"""Find the upstream task of a submit whose answer we never stored.

Used when a worker died between sending a submit and saving the upstream id, and when a
submit's answer was lost (dropped connection, read timeout). DashScope has no idempotency
key, so the upstream task list (contract 2.4) is searched instead: tasks of the same model
created around the marked submit time, whose ``orig_prompt`` is the prompt we sent. Exactly
one such task that no other task of ours holds is adopted; none or several means the
outcome is unknown, and the relay fails the task rather than ever submitting it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from stillmotion.engines.dashscope.client import UpstreamClient, UpstreamError
from stillmotion.engines.relay.reconcile import Ambiguous, look_again

#: Labels of the list window are ``YYYYMMDDhhmmss`` in an unstated zone: a window of
#: 12 h either side (the 24 h maximum) holds the submit whatever the zone (UTC-12..+12);
#: the epoch-millisecond ``gmt_create`` of each item then narrows it down.
HALF_WINDOW = 12 * 3600
EARLY = 60.0  # an upstream clock this far behind ours still matches
LATE = 600.0  # the submit may have reached upstream this long after the marker
PAGE_SIZE = 100
MAX_PAGES = 20


def _label(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%d%H%M%S")


Throttle = Callable[[], Awaitable[None]]


async def _no_throttle() -> None:
    return None


async def _candidates(
    client: UpstreamClient, base: str, key: str, model: str, at: float, throttle: Throttle
) -> list[str]:
    """Ids of upstream tasks of ``model`` created near ``at``, newest first."""
    found: list[str] = []
    for page in range(1, MAX_PAGES + 1):
        await throttle()
        params = {
            "start_time": _label(at - HALF_WINDOW),
            "end_time": _label(at + HALF_WINDOW),
            "model_name": model,
            "page_no": page,
            "page_size": PAGE_SIZE,
        }
        body = await client.list(base, key, params)
        items: list[dict[str, Any]] = [i for i in body.get("data") or [] if isinstance(i, dict)]
        for item in items:
            created = float(item.get("gmt_create") or item.get("start_time") or 0) / 1000
            if at - EARLY <= created <= at + LATE and item.get("task_id"):
                found.append(str(item["task_id"]))
        if page >= int(body.get("total_page") or 1) or not items:
            return found
    raise Ambiguous(f"more than {MAX_PAGES * PAGE_SIZE} upstream tasks in the list window")


async def find_submitted(
    client: UpstreamClient,
    base: str,
    key: str,
    *,
    model: str,
    prompt: str,
    at: float,
    taken: Collection[str] = (),
    throttle: Throttle = _no_throttle,
) -> str | None:
    """The upstream id of the submit marked at ``at``; None if it is not there.

    ``taken``: upstream ids other tasks of ours hold; ``throttle`` is awaited before each
    call. Raises :class:`Ambiguous` when several tasks match and :class:`UpstreamError`
    when the list cannot be read.
    """

    async def look() -> list[str]:
        found = await _candidates(client, base, key, model, at, throttle)
        matches = []
        for task_id in (i for i in found if i not in taken):
            await throttle()
            body = await client.get(base, key, task_id)
            if (body["output"].get("orig_prompt") or "") == prompt:
                matches.append(task_id)
        return matches

    return await look_again(look)


__all__ = ["Ambiguous", "UpstreamError", "find_submitted"]
