"""Find the video of a submit whose answer we never stored, in ``GET /v1/videos``.

The list is read newest first (``order=desc``, cursor ``after``) back to a little before the
marker's time. An item that carries our submit id (``submit_id``: a server or gateway that
keeps the ``X-Stillmotion-Submit-Id`` header, as the fake does) is matched on it alone;
otherwise items made from the marker time to :data:`LATE` after it, of the same model, whose
``prompt`` is the prompt we sent. Exactly one match is adopted (``relay/reconcile.py``).
A server that cannot list videos (4xx) has nothing to show: the submit counts as not found
and the task fails with ``InternalError.SubmitUnknown``, never submitted again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from stillmotion.engines.openai_videos.client import VideosClient
from stillmotion.engines.relay.http import Failure, UpstreamError
from stillmotion.engines.relay.reconcile import Ambiguous, look_again

EARLY = 60.0  # an upstream clock this far behind ours still matches
LATE = 600.0  # the submit may have reached upstream this long after the marker
PAGE_SIZE = 100
MAX_PAGES = 20

Throttle = Callable[[], Awaitable[None]]


def _matches(item: dict[str, Any], marker: dict[str, Any], prompt: str) -> bool:
    if item.get("submit_id"):
        return str(item["submit_id"]) == str(marker.get("submit_id"))
    at = float(marker["at"])
    created = item.get("created_at")
    if not isinstance(created, int | float) or not at - EARLY <= created <= at + LATE:
        return False
    model = marker.get("model")
    if model and item.get("model") and str(item["model"]) != str(model):
        return False
    return item.get("prompt") == prompt


async def find_submitted(
    client: VideosClient,
    base: str,
    key: str,
    *,
    marker: dict[str, Any],
    prompt: str,
    taken: Collection[str] = (),
    throttle: Throttle,
) -> str | None:
    """The id of the video the submit ``marker`` records; None if it is not there.
    Raises :class:`Ambiguous` and :class:`UpstreamError` (a list that cannot be read now)."""
    oldest = float(marker["at"]) - EARLY

    async def look() -> list[str]:
        found: list[str] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            await throttle()
            try:
                page = await client.list(base, key, after=after, limit=PAGE_SIZE)
            except UpstreamError as exc:
                if exc.failure is Failure.REJECTED:  # no list on this server
                    return []
                raise
            items = [i for i in page.get("data") or [] if isinstance(i, dict) and i.get("id")]
            for item in items:
                if str(item["id"]) not in taken and _matches(item, marker, prompt):
                    found.append(str(item["id"]))
            created = [i["created_at"] for i in items if isinstance(i.get("created_at"), int)]
            if not page.get("has_more") or not items or (created and min(created) < oldest):
                return found
            after = str(items[-1]["id"])
        raise Ambiguous(f"more than {MAX_PAGES * PAGE_SIZE} videos to search")

    return await look_again(look)
