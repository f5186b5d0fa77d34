"""The operator's API under ``/admin/v1``: accounts, their money, limits and keys, the
ledger, usage of any account, and completion webhooks (endpoints, callback secrets,
deliveries: docs/webhooks.md).

Every route needs an admin key (``keys create --admin``, or ``POST .../keys`` with
``"admin": true``): no key or an unknown one is 401 ``InvalidApiKey``, an ordinary key 403
``AccessDenied``. Amounts are decimal strings (or JSON numbers) of the currency, converted
exactly to micros (``money.to_micros``); a bad one is 400 ``InvalidParameter`` naming it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from stillmotion.api.deps import RuntimeDep, get_key
from stillmotion.api.openapi import SECURED, error_responses
from stillmotion.api.routes_account import (
    USAGE_RESPONSES,
    EndQuery,
    GroupQuery,
    StartQuery,
    account_json,
    answer_usage,
    limits_json,
)
from stillmotion.api.schemas import (
    AccountCreate,
    AccountList,
    AccountOut,
    AccountPatch,
    Adjustment,
    CallbackSecretOut,
    KeyCreate,
    KeyList,
    KeyOut,
    LedgerList,
    LimitsPatch,
    Movement,
    NewKeyOut,
    NewWebhookOut,
    TopUp,
    WebhookCreate,
    WebhookDeliveryList,
    WebhookList,
    WebhookOut,
)
from stillmotion.domain import is_clean_text
from stillmotion.errors import AccessDenied, InvalidParameter, NotFound
from stillmotion.money import SCALE, MoneyError, format_micros, to_micros
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.rows import AccountRow, ApiKeyRow
from stillmotion.tasks.webhooks import EndpointRow

NOT_ADMIN = "This API key is not an admin key."
#: the largest single amount taken (a top-up, an adjustment either way, a budget)
MAX_AMOUNT = 1_000_000_000 * SCALE
#: money fields inside ledger entries' ``detail`` (micros), shown as decimal strings
_DETAIL_MONEY = ("hold", "released")


async def admin_key(request: Request) -> ApiKeyRow:
    """The caller's key, which must be an admin key (401 / 403 otherwise)."""
    key = await get_key(request)
    if not key.is_admin:
        raise AccessDenied(NOT_ADMIN)
    return key


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(admin_key)])

_ERRORS = error_responses(
    400, 401, 403, 404, 500, notes={403: "`AccessDenied`: the key is not an admin key."}
)
_NO_404 = {status: answer for status, answer in _ERRORS.items() if status != 404}


# -- helpers -------------------------------------------------------------------------------


def _micros(value: str, field: str, *, negative: bool = False) -> int:
    try:
        micros = to_micros(value, what=field, negative=negative)
    except MoneyError as exc:
        raise InvalidParameter(str(exc)) from None
    if abs(micros) > MAX_AMOUNT:
        raise InvalidParameter(f"{field} {value!r} is over {format_micros(MAX_AMOUNT)}")
    return micros


def _price_group(runtime: Runtime, value: str | None) -> str | None:
    groups = runtime.service.prices.groups
    if value is not None and value not in groups:
        known = ", ".join(sorted(groups)) or "none are set (STILLMOTION_PRICE_GROUPS)"
        raise InvalidParameter(f"price_group: {value!r} is not a price group; known: {known}.")
    return value


async def _account(runtime: Runtime, account_id: str) -> AccountRow:
    account = await runtime.store.accounts.get(account_id) if is_clean_text(account_id) else None
    if account is None:
        raise NotFound(f"No account {account_id!r}.")
    return account


async def _key(runtime: Runtime, key_id: str) -> ApiKeyRow:
    key = await runtime.store.accounts.key(key_id) if is_clean_text(key_id) else None
    if key is None:
        raise NotFound(f"No API key {key_id!r}.")
    return key


def key_json(runtime: Runtime, key: ApiKeyRow) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "account_id": key.account_id,
        "is_admin": key.is_admin,
        "created_time": runtime.renderer.time_string(key.created_at),
        "revoked_time": runtime.renderer.time_string(key.revoked_at),
        "limits": limits_json(key.limits),
    }


def entry_json(runtime: Runtime, entry: dict[str, Any]) -> dict[str, Any]:
    detail = entry.get("detail")
    if isinstance(detail, dict):
        detail = {
            k: format_micros(v) if k in _DETAIL_MONEY and isinstance(v, int) else v
            for k, v in detail.items()
        }
    return {
        "id": entry["id"],
        "kind": entry["kind"],
        "amount": format_micros(entry["amount"]),
        "balance_delta": format_micros(entry["balance_delta"]),
        "held_delta": format_micros(entry["held_delta"]),
        "task_id": entry["task_id"],
        "time": runtime.renderer.time_string(float(entry["at"])),
        "detail": detail,
    }


def _changes(runtime: Runtime, body: LimitsPatch) -> dict[str, Any]:
    """The fields the body sent, as ``Accounts.set`` takes them (``None`` clears)."""
    values: dict[str, Any] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field == "name" and value is None:
            raise InvalidParameter("name: may not be null.")
        if field == "daily_budget" and value is not None:
            value = _micros(value, "daily_budget")
        if field == "price_group":
            value = _price_group(runtime, value)
        values[field] = value
    return values


# -- accounts ------------------------------------------------------------------------------


@router.post(
    "/accounts",
    status_code=201,
    summary="Create an account",
    responses={201: {"model": AccountOut}, **_NO_404},
    openapi_extra=SECURED,
)
async def create_account(runtime: RuntimeDep, body: AccountCreate) -> Any:
    balance = _micros(body.balance, "balance") if body.balance is not None else 0
    group = _price_group(runtime, body.price_group)
    account_id = await runtime.store.accounts.create(body.name, balance, price_group=group)
    return account_json(runtime, await _account(runtime, account_id))


@router.get(
    "/accounts",
    summary="All accounts, oldest first",
    responses={200: {"model": AccountList}, **_NO_404},
    openapi_extra=SECURED,
)
async def list_accounts(runtime: RuntimeDep) -> Any:
    accounts = await runtime.store.accounts.all()
    return {"object": "list", "data": [account_json(runtime, a) for a in accounts]}


@router.get(
    "/accounts/{account_id}",
    summary="One account",
    responses={200: {"model": AccountOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def show_account(runtime: RuntimeDep, account_id: str) -> Any:
    return account_json(runtime, await _account(runtime, account_id))


@router.patch(
    "/accounts/{account_id}",
    summary="Change an account's name, price group or limits",
    responses={200: {"model": AccountOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def patch_account(runtime: RuntimeDep, account_id: str, body: AccountPatch) -> Any:
    await _account(runtime, account_id)
    values = _changes(runtime, body)
    if not await runtime.store.accounts.set(account_id, **values):
        raise NotFound(f"No account {account_id!r}.")
    return account_json(runtime, await _account(runtime, account_id))


async def _move(
    runtime: Runtime, account_id: str, kind: str, micros: int, ref: str | None, note: str | None
) -> dict[str, Any]:
    await _account(runtime, account_id)
    try:
        applied = await runtime.store.accounts.move(
            account_id, micros, kind=kind, ref=ref, note=note
        )
    except LookupError:
        raise NotFound(f"No account {account_id!r}.") from None
    return {
        "applied": applied,
        "account": account_json(runtime, await _account(runtime, account_id)),
    }


@router.post(
    "/accounts/{account_id}/top-up",
    summary="Add money to an account (idempotent with `ref`)",
    responses={200: {"model": Movement}, **_ERRORS},
    openapi_extra=SECURED,
)
async def top_up(runtime: RuntimeDep, account_id: str, body: TopUp) -> Any:
    micros = _micros(body.amount, "amount")
    if micros <= 0:
        raise InvalidParameter("amount: must be above 0.")
    return await _move(runtime, account_id, "topup", micros, body.ref, body.note)


@router.post(
    "/accounts/{account_id}/adjustments",
    summary="Correct an account's balance either way (idempotent with `ref`)",
    responses={200: {"model": Movement}, **_ERRORS},
    openapi_extra=SECURED,
)
async def adjust(runtime: RuntimeDep, account_id: str, body: Adjustment) -> Any:
    micros = _micros(body.amount, "amount", negative=True)
    if micros == 0:
        raise InvalidParameter("amount: must not be 0.")
    return await _move(runtime, account_id, "adjustment", micros, body.ref, body.note)


@router.get(
    "/accounts/{account_id}/ledger",
    summary="An account's ledger entries, newest first",
    responses={200: {"model": LedgerList}, **_ERRORS},
    openapi_extra=SECURED,
)
async def ledger(
    runtime: RuntimeDep,
    account_id: str,
    limit: Annotated[int, Query(ge=1, le=1000, description="Entries (1-1000).")] = 100,
) -> Any:
    await _account(runtime, account_id)
    entries = await runtime.store.accounts.entries(account_id, limit)
    data = [entry_json(runtime, e) for e in entries]
    return {"object": "list", "account_id": account_id, "data": data}


# -- keys ----------------------------------------------------------------------------------


@router.post(
    "/accounts/{account_id}/keys",
    status_code=201,
    summary="Create an API key of an account (the secret is shown once)",
    responses={201: {"model": NewKeyOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def create_account_key(runtime: RuntimeDep, account_id: str, body: KeyCreate) -> Any:
    await _account(runtime, account_id)
    try:
        new = await create_key(runtime.store, body.name, account_id=account_id, is_admin=body.admin)
    except LookupError:
        raise NotFound(f"No account {account_id!r}.") from None
    return {**key_json(runtime, new.row), "key": new.key}


@router.get(
    "/accounts/{account_id}/keys",
    summary="An account's API keys (revoked ones too; never their secrets)",
    responses={200: {"model": KeyList}, **_ERRORS},
    openapi_extra=SECURED,
)
async def list_account_keys(runtime: RuntimeDep, account_id: str) -> Any:
    await _account(runtime, account_id)
    keys = await runtime.store.accounts.keys(account_id)
    return {
        "object": "list",
        "account_id": account_id,
        "data": [key_json(runtime, k) for k in keys],
    }


@router.patch(
    "/keys/{key_id}",
    summary="Change one key's name or limits",
    responses={200: {"model": KeyOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def patch_key(runtime: RuntimeDep, key_id: str, body: LimitsPatch) -> Any:
    key = await _key(runtime, key_id)
    values = _changes(runtime, body)
    if key.account_id is None or not await runtime.store.accounts.set(
        key.account_id, key_id=key.id, **values
    ):
        raise NotFound(f"No API key {key_id!r}.")
    return key_json(runtime, await _key(runtime, key_id))


@router.post(
    "/keys/{key_id}/revoke",
    summary="Revoke a key (it answers 401 from then on)",
    responses={200: {"model": KeyOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def revoke_key(runtime: RuntimeDep, key_id: str) -> Any:
    key = await _key(runtime, key_id)
    if key.revoked_at is None:
        await runtime.store.revoke_key(key.id)
    return key_json(runtime, await _key(runtime, key_id))


# -- usage ---------------------------------------------------------------------------------


@router.get(
    "/usage",
    summary="Usage of one account or of all",
    responses={**USAGE_RESPONSES, **_ERRORS},
    openapi_extra=SECURED,
)
async def usage(
    request: Request,
    runtime: RuntimeDep,
    account: Annotated[
        str | None, Query(max_length=32, description="An account id; omitted: every account.")
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    group_by: GroupQuery = "day",
) -> Any:
    if account is not None:
        await _account(runtime, account)
    return await answer_usage(request, runtime, account, start, end, group_by)


# -- webhooks ------------------------------------------------------------------------------


def webhook_json(runtime: Runtime, row: EndpointRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "url": row.url,
        "created_time": runtime.renderer.time_string(row.created_at),
    }


def delivery_json(runtime: Runtime, d: dict[str, Any]) -> dict[str, Any]:
    when = runtime.renderer.time_string
    attempts = [
        {"time": when(a["at"]), "duration_ms": a["duration_ms"],
         "status_code": a["status_code"], "error": a["error"]}
        for a in d["attempts"]
    ]  # fmt: skip
    return {
        "id": d["id"],
        "task_id": d["task_id"],
        "account_id": d["account_id"],
        "endpoint_id": d["endpoint_id"],
        "url": d["url"],
        "status": d["status"],
        "created_time": when(d["created_at"]),
        "next_time": when(d["next_at"]) if d["status"] == "pending" else None,
        "ended_time": when(d["ended_at"]),
        "last_status": d["last_status"],
        "last_error": d["last_error"],
        "attempts": attempts,
    }


@router.post(
    "/accounts/{account_id}/webhooks",
    status_code=201,
    summary="Register a webhook endpoint for all of an account's tasks (secret shown once)",
    responses={201: {"model": NewWebhookOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def create_webhook(runtime: RuntimeDep, account_id: str, body: WebhookCreate) -> Any:
    await _account(runtime, account_id)
    try:
        row, secret = await runtime.store.webhooks.add_endpoint(account_id, body.url)
    except LookupError:
        raise NotFound(f"No account {account_id!r}.") from None
    return {**webhook_json(runtime, row), "secret": secret}


@router.get(
    "/accounts/{account_id}/webhooks",
    summary="An account's webhook endpoints (never their secrets)",
    responses={200: {"model": WebhookList}, **_ERRORS},
    openapi_extra=SECURED,
)
async def list_webhooks(runtime: RuntimeDep, account_id: str) -> Any:
    await _account(runtime, account_id)
    rows = await runtime.store.webhooks.endpoints(account_id)
    return {
        "object": "list",
        "account_id": account_id,
        "data": [webhook_json(runtime, r) for r in rows],
    }


@router.delete(
    "/webhooks/{endpoint_id}",
    summary="Remove a webhook endpoint (its pending deliveries fail)",
    responses={200: {"model": WebhookOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def delete_webhook(runtime: RuntimeDep, endpoint_id: str) -> Any:
    hooks = runtime.store.webhooks
    row = await hooks.endpoint(endpoint_id) if is_clean_text(endpoint_id) else None
    if row is None or not await hooks.remove_endpoint(endpoint_id):
        raise NotFound(f"No webhook endpoint {endpoint_id!r}.")
    return webhook_json(runtime, row)


@router.get(
    "/accounts/{account_id}/webhook-secret",
    summary="The account's callback secret (signs X-Stillmotion-Callback deliveries)",
    responses={200: {"model": CallbackSecretOut}, **_ERRORS},
    openapi_extra=SECURED,
)
async def callback_secret(runtime: RuntimeDep, account_id: str) -> Any:
    await _account(runtime, account_id)
    try:
        secret = await runtime.store.webhooks.callback_secret(account_id)
    except LookupError:
        raise NotFound(f"No account {account_id!r}.") from None
    return {"account_id": account_id, "secret": secret}


@router.get(
    "/webhook-deliveries",
    summary="Webhook deliveries, newest first, with their attempts",
    responses={200: {"model": WebhookDeliveryList}, **_NO_404},
    openapi_extra=SECURED,
)
async def list_deliveries(
    runtime: RuntimeDep,
    account: Annotated[str | None, Query(max_length=32, description="An account id.")] = None,
    task: Annotated[str | None, Query(max_length=36, description="A task id.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    for name, value in (("account", account), ("task", task)):
        if value is not None and not is_clean_text(value):
            raise InvalidParameter(f"{name} must not contain NUL characters or invalid Unicode.")
    rows = await runtime.store.webhooks.deliveries(task_id=task, account_id=account, limit=limit)
    return {"object": "list", "data": [delivery_json(runtime, d) for d in rows]}
