"""The admin API (``/admin/v1``) and ``GET /v1/account``, in-process, on SQLite and PostgreSQL:
who may call it, accounts, money movements (idempotent refs), limits (``null`` clears),
keys of an account, revocation, the ledger, and that no account sees another's data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from tests.store_fixtures import BACKENDS, database_url

A = "/admin/v1"
NOT_ADMIN = "This API key is not an admin key."
ZERO_LIMITS = {"max_concurrent": None, "max_pending": None, "submit_rate": None,
               "daily_budget": None}  # fmt: skip


@pytest.fixture(params=BACKENDS)
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with database_url(request.param, tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=url,
            workers=0,
            key_cache_seconds=0,
            price_groups="vip=0.8",
        )
        rt = await open_runtime(settings)
        try:
            yield rt
        finally:
            await rt.close()


@pytest.fixture
async def admin(runtime: Runtime) -> dict[str, str]:
    return bearer((await create_key(runtime.store, "ops", is_admin=True)).key)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(resp: httpx.Response, status: int, code: str, message: str = "") -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"request_id", "code", "message"}, body
    assert body["code"] == code and message in body["message"], body


async def new_account(
    client: httpx.AsyncClient, admin: dict[str, str], **fields: Any
) -> dict[str, Any]:
    resp = await client.post(f"{A}/accounts", json={"name": "acme", **fields}, headers=admin)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def new_key(
    client: httpx.AsyncClient, headers: dict[str, str], account_id: str, **fields: Any
) -> dict[str, Any]:
    resp = await client.post(
        f"{A}/accounts/{account_id}/keys", json={"name": "k", **fields}, headers=headers
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


# -- who may call it -----------------------------------------------------------------------

ROUTES = [
    ("POST", "/accounts", {"name": "x"}),
    ("GET", "/accounts", None),
    ("GET", "/accounts/{account_id}", None),
    ("PATCH", "/accounts/{account_id}", {"max_pending": 1}),
    ("POST", "/accounts/{account_id}/top-up", {"amount": "1"}),
    ("POST", "/accounts/{account_id}/adjustments", {"amount": "1", "note": "n"}),
    ("GET", "/accounts/{account_id}/ledger", None),
    ("POST", "/accounts/{account_id}/keys", {"name": "x"}),
    ("GET", "/accounts/{account_id}/keys", None),
    ("PATCH", "/keys/{key_id}", {"max_pending": 1}),
    ("POST", "/keys/{key_id}/revoke", None),
    ("GET", "/usage", None),
    ("POST", "/accounts/{account_id}/webhooks", {"url": "https://h.example.com/x"}),
    ("GET", "/accounts/{account_id}/webhooks", None),
    ("GET", "/accounts/{account_id}/webhook-secret", None),
    ("DELETE", "/webhooks/{endpoint_id}", None),
    ("GET", "/webhook-deliveries", None),
]


def test_the_route_list_is_every_admin_route() -> None:
    paths = create_app(Settings()).openapi()["paths"]
    served = {
        (method.upper(), path.removeprefix(A))
        for path, operations in paths.items()
        if path.startswith(A + "/")
        for method in operations
    }
    assert served == {(m, p) for m, p, _ in ROUTES}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_an_ordinary_key_is_403_and_no_key_401(
    client: httpx.AsyncClient,
    runtime: Runtime,
    auth: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    """On the caller's own account and key too: an ordinary key changes nothing."""
    own = await runtime.keys.verify(auth["Authorization"])
    url = A + path.format(account_id=own.account_id, key_id=own.id, endpoint_id="we_x")
    resp = await client.request(method, url, json=body, headers=auth)
    assert_error(resp, 403, "AccessDenied", NOT_ADMIN)
    for headers in ({}, bearer("sm-unknown")):
        resp = await client.request(method, url, json=body, headers=headers)
        assert_error(resp, 401, "InvalidApiKey")
    assert (await client.get("/v1/account", headers=auth)).json()["limits"] == ZERO_LIMITS
    assert (await runtime.store.accounts.entries(own.account_id or "")) == []
    assert len(await runtime.store.accounts.all()) == 1


async def test_an_admin_key_made_here_is_an_admin_key(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    account = await new_account(client, admin)
    ordinary = await new_key(client, admin, account["id"])
    second = await new_key(client, admin, account["id"], admin=True)
    assert (ordinary["is_admin"], second["is_admin"]) == (False, True)
    resp = await client.get(f"{A}/accounts", headers=bearer(second["key"]))
    assert resp.status_code == 200
    assert_error(await client.get(f"{A}/accounts", headers=bearer(ordinary["key"])), 403,
                 "AccessDenied")  # fmt: skip
    resp = await client.post(f"{A}/accounts/{account['id']}/keys",
                             json={"name": "k", "admin": "yes"}, headers=admin)  # fmt: skip
    assert_error(resp, 400, "InvalidParameter", "admin")


# -- accounts ------------------------------------------------------------------------------


async def test_create_list_and_show_accounts(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    made = await new_account(client, admin, balance="100", price_group="vip")
    assert made["name"] == "acme" and made["currency"] == "CNY" and made["billing"] == "off"
    assert (made["balance"], made["held"], made["available"]) == ("100.00", "0.00", "100.00")
    assert made["price_group"] == "vip" and made["limits"] == ZERO_LIMITS
    assert "key_limits" not in made and made["created_time"]
    plain = await new_account(client, admin, name="plain", balance=2.5)
    assert plain["balance"] == "2.50" and plain["price_group"] is None
    listed = (await client.get(f"{A}/accounts", headers=admin)).json()
    assert listed["object"] == "list"
    ids = [a["id"] for a in listed["data"]]
    assert ids[-2:] == [made["id"], plain["id"]] and len(ids) == 3  # and the admin's own
    shown = await client.get(f"{A}/accounts/{made['id']}", headers=admin)
    assert shown.status_code == 200 and shown.json() == made
    # the opening balance is a ledger entry: the books agree
    assert not any((await runtime.store.verify_billing()).values())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "balance": "1.2345678"}, "balance"),
        ({"name": "x", "balance": "-1"}, "balance"),
        ({"name": "x", "balance": "ten"}, "balance"),
        ({"name": "x", "balance": True}, "balance"),
        ({"name": "x", "balance": "1e12"}, "balance"),
        ({"name": "x", "price_group": "gold"}, "price_group"),
        ({"name": ""}, "name"),
        ({"name": "a\u0000b"}, "name"),
        ({}, "name"),
        ({"name": "x", "owner": "me"}, "owner"),
    ],
)
async def test_a_bad_account_body_is_400_naming_the_field(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, body: Any, field: str
) -> None:
    resp = await client.post(f"{A}/accounts", json=body, headers=admin)
    assert_error(resp, 400, "InvalidParameter", field)
    assert len(await runtime.store.accounts.all()) == 1  # the admin's own only


@pytest.mark.parametrize("account_id", ["nope", "a%00b", "%ED%A0%80", "%F0%9F%98%80"])
async def test_an_unknown_account_is_404(
    client: httpx.AsyncClient, admin: dict[str, str], account_id: str
) -> None:
    for method, path, body in ROUTES:
        if "{account_id}" in path:
            url = A + path.format(account_id=account_id)
            resp = await client.request(method, url, json=body, headers=admin)
            assert_error(resp, 404, "NotFound")
    resp = await client.get(f"{A}/usage", params={"account": "nope"}, headers=admin)
    assert_error(resp, 404, "NotFound")
    for method, path, body in ROUTES:
        if "{key_id}" in path:
            resp = await client.request(method, A + path.format(key_id="nope"), json=body,
                                        headers=admin)  # fmt: skip
            assert_error(resp, 404, "NotFound")


# -- money -----------------------------------------------------------------------------------


async def test_top_up_is_idempotent_by_ref(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    account = await new_account(client, admin)
    url = f"{A}/accounts/{account['id']}/top-up"
    first = await client.post(url, json={"amount": "12.50", "ref": "pay-1"}, headers=admin)
    assert first.status_code == 200, first.text
    assert first.json()["applied"] is True and first.json()["account"]["balance"] == "12.50"
    again = await client.post(url, json={"amount": "12.50", "ref": "pay-1"}, headers=admin)
    assert again.status_code == 200
    assert again.json()["applied"] is False and again.json()["account"]["balance"] == "12.50"
    other = await client.post(url, json={"amount": 0.595, "ref": "pay-2", "note": "x"},
                              headers=admin)  # fmt: skip
    assert other.json()["account"]["balance"] == "13.095"
    unref = [await client.post(url, json={"amount": 1}, headers=admin) for _ in range(2)]
    assert [r.json()["applied"] for r in unref] == [True, True]  # no ref: every one counts
    assert unref[-1].json()["account"]["available"] == "15.095"


@pytest.mark.parametrize(
    "amount", ["0", "-1", "0.0000001", "abc", "NaN", "Infinity", True, None, [1], "1000000001"]
)
async def test_a_bad_top_up_amount_is_400_naming_it(
    client: httpx.AsyncClient, admin: dict[str, str], amount: Any
) -> None:
    account = await new_account(client, admin)
    resp = await client.post(f"{A}/accounts/{account['id']}/top-up", json={"amount": amount},
                             headers=admin)  # fmt: skip
    assert_error(resp, 400, "InvalidParameter", "amount")
    shown = (await client.get(f"{A}/accounts/{account['id']}", headers=admin)).json()
    assert shown["balance"] == "0.00"


async def test_adjustments_go_either_way_and_need_a_note(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    account = await new_account(client, admin, balance="10")
    url = f"{A}/accounts/{account['id']}/adjustments"
    down = await client.post(url, json={"amount": "-2.25", "note": "refund fix", "ref": "r1"},
                             headers=admin)  # fmt: skip
    assert down.status_code == 200 and down.json()["account"]["balance"] == "7.75"
    again = await client.post(url, json={"amount": "-2.25", "note": "refund fix", "ref": "r1"},
                              headers=admin)  # fmt: skip
    assert again.json() == {**down.json(), "applied": False}
    below = await client.post(url, json={"amount": -10, "note": "chargeback"}, headers=admin)
    assert below.json()["account"]["balance"] == "-2.25"  # an adjustment may go below zero
    assert_error(await client.post(url, json={"amount": "1"}, headers=admin), 400,
                 "InvalidParameter", "note")  # fmt: skip
    assert_error(await client.post(url, json={"amount": "0", "note": "x"}, headers=admin), 400,
                 "InvalidParameter", "amount")  # fmt: skip


async def test_the_ledger_lists_every_movement_newest_first(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    account = await new_account(client, admin, balance="5")
    base = f"{A}/accounts/{account['id']}"
    await client.post(f"{base}/top-up", json={"amount": "3", "ref": "t", "note": "wire"},
                      headers=admin)  # fmt: skip
    await client.post(f"{base}/adjustments", json={"amount": "-1", "note": "fix"}, headers=admin)
    resp = await client.get(f"{base}/ledger", headers=admin)
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list" and body["account_id"] == account["id"]
    kinds = [(e["kind"], e["amount"], e["balance_delta"], e["held_delta"]) for e in body["data"]]
    assert sorted(kinds) == sorted([("topup", "5.00", "5.00", "0.00"),
                                    ("topup", "3.00", "3.00", "0.00"),
                                    ("adjustment", "-1.00", "-1.00", "0.00")])  # fmt: skip
    notes = {e["kind"] + ":" + str((e["detail"] or {}).get("note")) for e in body["data"]}
    assert notes == {"topup:opening", "topup:wire", "adjustment:fix"}
    assert all(e["time"] and e["task_id"] is None for e in body["data"])
    assert [e["time"] for e in body["data"]] == sorted((e["time"] for e in body["data"]),
                                                       reverse=True)  # fmt: skip
    one = (await client.get(f"{base}/ledger?limit=1", headers=admin)).json()["data"]
    assert len(one) == 1 and one[0] == body["data"][0]
    for limit in ("0", "1001", "x"):
        resp = await client.get(f"{base}/ledger?limit={limit}", headers=admin)
        assert_error(resp, 400, "InvalidParameter", "limit")


# -- limits ----------------------------------------------------------------------------------


async def test_patch_sets_what_is_sent_and_null_clears(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    account = await new_account(client, admin)
    url = f"{A}/accounts/{account['id']}"
    set_all = {"max_concurrent": 2, "max_pending": 10, "submit_rate": 0.5,
               "daily_budget": "20.5", "price_group": "vip", "name": "acme2"}  # fmt: skip
    resp = await client.patch(url, json=set_all, headers=admin)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["limits"] == {"max_concurrent": 2, "max_pending": 10, "submit_rate": 0.5,
                              "daily_budget": "20.50"}  # fmt: skip
    assert (body["name"], body["price_group"]) == ("acme2", "vip")
    resp = await client.patch(url, json={"max_pending": None, "price_group": None}, headers=admin)
    body = resp.json()
    assert body["limits"] == {"max_concurrent": 2, "max_pending": None, "submit_rate": 0.5,
                              "daily_budget": "20.50"}  # fmt: skip
    assert (body["name"], body["price_group"]) == ("acme2", None)
    assert (await client.patch(url, json={}, headers=admin)).json() == body  # nothing sent
    assert (await client.get(url, headers=admin)).json() == body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_pending": -1}, "max_pending"),
        ({"max_pending": 1.5}, "max_pending"),
        ({"max_concurrent": "2"}, "max_concurrent"),
        ({"max_concurrent": 2**31}, "max_concurrent"),
        ({"submit_rate": 0}, "submit_rate"),
        ({"daily_budget": "-3"}, "daily_budget"),
        ({"daily_budget": "1.0000001"}, "daily_budget"),
        ({"price_group": "gold"}, "price_group"),
        ({"name": None}, "name"),
        ({"balance": "5"}, "balance"),
    ],
)
async def test_a_bad_patch_is_400_and_changes_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], body: Any, field: str
) -> None:
    account = await new_account(client, admin)
    url = f"{A}/accounts/{account['id']}"
    resp = await client.patch(url, json={"max_concurrent": 3, **body}, headers=admin)
    assert_error(resp, 400, "InvalidParameter", field)
    assert (await client.get(url, headers=admin)).json() == account


# -- keys ------------------------------------------------------------------------------------


async def test_a_new_key_belongs_to_its_account_and_can_be_revoked(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    account = await new_account(client, admin, balance="7", price_group="vip")
    made = await new_key(client, admin, account["id"], name="ci")
    assert made["key"].startswith("sm-") and made["key"].startswith(made["prefix"])
    assert (made["name"], made["account_id"], made["is_admin"]) == ("ci", account["id"], False)
    assert made["revoked_time"] is None and made["limits"] == ZERO_LIMITS
    mine = await client.get("/v1/account", headers=bearer(made["key"]))
    assert mine.status_code == 200, mine.text
    shown = mine.json()
    assert shown == {**account, "key_limits": ZERO_LIMITS}
    listed = (await client.get(f"{A}/accounts/{account['id']}/keys", headers=admin)).json()
    assert listed["account_id"] == account["id"]
    assert [k["id"] for k in listed["data"]] == [made["id"]]
    assert "key" not in listed["data"][0]
    assert listed["data"][0] == {k: v for k, v in made.items() if k != "key"}
    # one key's limits, seen by that key only
    limits = {"max_pending": 3, "daily_budget": 1}
    resp = await client.patch(f"{A}/keys/{made['id']}", json=limits, headers=admin)
    assert resp.status_code == 200, resp.text
    assert resp.json()["limits"] == {**ZERO_LIMITS, "max_pending": 3, "daily_budget": "1.00"}
    shown = (await client.get("/v1/account", headers=bearer(made["key"]))).json()
    assert shown["key_limits"]["max_pending"] == 3 and shown["limits"] == ZERO_LIMITS
    resp = await client.patch(f"{A}/keys/{made['id']}", json={"max_pending": None},
                              headers=admin)  # fmt: skip
    assert resp.json()["limits"] == {**ZERO_LIMITS, "daily_budget": "1.00"}
    resp = await client.patch(f"{A}/keys/{made['id']}", json={"price_group": "vip"},
                              headers=admin)  # fmt: skip
    assert_error(resp, 400, "InvalidParameter", "price_group")
    # revoked: 401 from then on; revoking again changes nothing
    revoked = await client.post(f"{A}/keys/{made['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_time"]
    assert_error(await client.get("/v1/account", headers=bearer(made["key"])), 401,
                 "InvalidApiKey")  # fmt: skip
    again = await client.post(f"{A}/keys/{made['id']}/revoke", headers=admin)
    assert again.json() == revoked.json()
    listed = (await client.get(f"{A}/accounts/{account['id']}/keys", headers=admin)).json()
    assert listed["data"][0]["revoked_time"] == revoked.json()["revoked_time"]


# -- tenancy ---------------------------------------------------------------------------------


async def test_an_account_never_sees_another(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    one = await new_account(client, admin, name="one", balance="1")
    two = await new_account(client, admin, name="two", balance="2", price_group="vip")
    await client.patch(f"{A}/accounts/{two['id']}", json={"max_pending": 9}, headers=admin)
    key_one = (await new_key(client, admin, one["id"]))["key"]
    key_two = (await new_key(client, admin, two["id"]))["key"]
    seen_one = (await client.get("/v1/account", headers=bearer(key_one))).json()
    seen_two = (await client.get("/v1/account", headers=bearer(key_two))).json()
    assert (seen_one["id"], seen_one["name"], seen_one["balance"]) == (one["id"], "one", "1.00")
    assert (seen_two["id"], seen_two["name"], seen_two["balance"]) == (two["id"], "two", "2.00")
    assert seen_one["price_group"] is None and seen_one["limits"]["max_pending"] is None
    text_one = (await client.get("/v1/account", headers=bearer(key_one))).text
    for secret in (two["id"], "two", "vip", key_two):
        assert secret not in text_one
    for path in ("/v1/usage", "/v1/usage?group_by=key", "/v1/tasks"):
        assert two["id"] not in (await client.get(path, headers=bearer(key_one))).text
    usage = (await client.get("/v1/usage", headers=bearer(key_one))).json()
    assert usage["account_id"] == one["id"]


async def test_admin_routes_are_documented_under_their_tag(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    tags = {t["name"]: t.get("description") for t in doc["tags"]}
    assert tags["admin"] and tags["account"]
    for method, path, _ in ROUTES:
        op = doc["paths"][A + path][method.lower()]
        assert op["tags"] == ["admin"], path
        assert op["security"] == [{"bearerAuth": []}], path
        assert {"401", "403", "500"} <= set(op["responses"]), path
    assert "201" in doc["paths"][A + "/accounts"]["post"]["responses"]
    usage = doc["paths"]["/v1/usage"]["get"]["responses"]["200"]["content"]
    assert set(usage) == {"application/json", "text/csv"}


async def test_every_admin_answer_matches_its_documented_schema(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    doc = (await client.get("/openapi.json")).json()
    account = await new_account(client, admin, balance="3")
    key = await new_key(client, admin, account["id"])
    await client.post(f"{A}/accounts/{account['id']}/top-up", json={"amount": 1}, headers=admin)
    hook = await client.post(
        f"{A}/accounts/{account['id']}/webhooks", json={"url": "https://h.example.com/y"},
        headers=admin,
    )  # fmt: skip
    calls = [(m, p, b) for m, p, b in ROUTES if p != "/keys/{key_id}/revoke"]
    calls += [("GET", "/v1/account", None), ("GET", "/v1/usage", None)]
    calls += [("POST", "/keys/{key_id}/revoke", None), ("GET", "/accounts/nope", None)]
    statuses = []
    for method, path, body in calls:
        url = path.format(account_id=account["id"], key_id=key["id"], endpoint_id=hook.json()["id"])
        url = url if url.startswith("/v1/") else A + url
        headers = bearer(key["key"]) if url.startswith("/v1/") else admin
        resp = await client.request(method, url, json=body, headers=headers)
        template = path if path.startswith("/v1/") else A + path
        if template == A + "/accounts/nope":
            template = A + "/accounts/{account_id}"
        op = doc["paths"][template][method.lower()]
        answer = op["responses"][str(resp.status_code)]
        schema = answer["content"]["application/json"]["schema"]
        jsonschema.validate(resp.json(), {**schema, "components": doc["components"]})
        statuses.append(resp.status_code)
    assert statuses.count(201) == 3 and statuses.count(404) == 1
    assert statuses.count(200) == len(calls) - 4
