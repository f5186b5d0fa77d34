"""Admission at submit: may this task be created? Pure decisions over locked state.

The submit's write transaction (``tasks/batch.py``) reads the rows of the accounts and keys
in its batch (locked on PostgreSQL, under ``BEGIN IMMEDIATE`` on SQLite), their PENDING
counts and the day's spend where a limit needs them, then asks :func:`decide` item by item,
in arrival order. Each accepted item changes the state the next one sees (its hold, a rate
token, one more PENDING task, its quote in the day's spend), so a batch of any size admits
exactly what one-at-a-time submits would: with a balance for N quotes, N are accepted.

Checks, in order: the key's and the account's submit rate (429 ``Throttling.RateQuota``,
``Retry-After``), PENDING caps and daily budgets (429 ``Throttling.AllocationQuota``), then,
with billing on, the account's available balance (400 ``Arrearage``). A refused item
changes nothing. Limits of a key narrow its account's: both must pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stillmotion.errors import AllocationQuota, Arrearage, RateQuota, ServiceError
from stillmotion.money import format_micros


@dataclass
class Holder:
    """An account's or key's admission state, as read in the transaction."""

    kind: str  # "account" | "key": named in messages
    id: str
    max_pending: int | None = None
    submit_rate: float | None = None
    daily_budget: int | None = None
    rate_tokens: float | None = None
    rate_at: float | None = None
    pending: int = 0  # PENDING tasks now (counted only when max_pending is set)
    spent: int = 0  # the day's captures and open quotes (only when daily_budget is set)
    balance: int = 0  # accounts only
    held: int = 0
    touched: bool = False  # rate state changed: write it back

    @property
    def available(self) -> int:
        return self.balance - self.held

    def tokens(self, now: float) -> float:
        """The rate bucket's tokens now; it holds one second's worth, at least one."""
        assert self.submit_rate is not None
        capacity = max(1.0, self.submit_rate)
        if self.rate_tokens is None or self.rate_at is None:
            return capacity
        return min(capacity, self.rate_tokens + max(0.0, now - self.rate_at) * self.submit_rate)


@dataclass(frozen=True)
class Ask:
    """One submit: whose it is and what it would reserve."""

    account_id: str
    key_id: str
    quote: int
    hold: bool  # billing on: reserve the quote
    currency: str = "CNY"
    #: how the quote was made (said only in a refusal): ``seconds`` at ``price`` a second
    price: int = 0
    seconds: float = 0


def _rate(holder: Holder, now: float) -> ServiceError | None:
    if holder.submit_rate is None:
        return None
    tokens = holder.tokens(now)
    if tokens >= 1.0:
        return None
    wait = max(1, math.ceil((1.0 - tokens) / holder.submit_rate))
    error = RateQuota(
        f"Requests rate limit exceeded: this {holder.kind} allows {holder.submit_rate:g} "
        f"submits per second; retry after {wait} s."
    )
    error.headers = {"Retry-After": str(wait)}
    return error


def _allocation(holder: Holder, ask: Ask) -> ServiceError | None:
    if holder.max_pending is not None and holder.pending >= holder.max_pending:
        return AllocationQuota(
            f"This {holder.kind} already has {holder.pending} tasks waiting (PENDING), its "
            f"limit of {holder.max_pending}; submit again once some have started."
        )
    if holder.daily_budget is not None and holder.spent + ask.quote > holder.daily_budget:
        cur = ask.currency
        return AllocationQuota(
            f"This {holder.kind}'s daily budget of {format_micros(holder.daily_budget)} {cur} "
            f"would be exceeded: {format_micros(holder.spent)} {cur} charged or held today "
            f"(UTC) and this task's quote is {format_micros(ask.quote)} {cur}."
        )
    return None


def _balance(account: Holder, ask: Ask) -> ServiceError | None:
    if not ask.hold or account.available >= ask.quote:
        return None
    cur = ask.currency
    how = f" ({ask.seconds:g} s at {format_micros(ask.price)} {cur}/s)" if ask.price else ""
    return Arrearage(
        f"Insufficient balance: this task's quote is {format_micros(ask.quote)} {cur}{how} "
        f"and the account's available balance is {format_micros(account.available)} {cur}. "
        "Top up the account and submit again."
    )


def decide(ask: Ask, account: Holder, key: Holder, now: float) -> ServiceError | None:
    """``None`` (accepted, and the state updated) or the error refusing ``ask``."""
    for check in (_rate(key, now), _rate(account, now)):
        if check is not None:
            return check
    for holder in (key, account):
        refused = _allocation(holder, ask)
        if refused is not None:
            return refused
    refused = _balance(account, ask)
    if refused is not None:
        return refused
    for holder in (key, account):
        if holder.submit_rate is not None:
            holder.rate_tokens = holder.tokens(now) - 1.0
            holder.rate_at = now
            holder.touched = True
        holder.pending += 1
        holder.spent += ask.quote
    if ask.hold:
        account.held += ask.quote
    return None
