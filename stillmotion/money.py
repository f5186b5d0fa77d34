"""Money as exact integers, and the price list. Imports only the catalog.

Every amount is an ``int`` of *micros*: millionths of the configured currency (1 CNY =
1,000,000). Nothing here is a float: list prices come from the catalog as ``Decimal``, the
operator's multiplier and price groups are ``Decimal``, and a per-second price is rounded
once (half up) to whole micros when the price list is built. A task's cost is that price
times the billed milliseconds, rounded half up to a micro: integer arithmetic from there on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from stillmotion.catalog import MODELS, ModelSpec

#: micros per currency unit
SCALE = 1_000_000
_QUANTUM = Decimal(1).scaleb(-6)


class MoneyError(ValueError):
    """An amount or price that is not a valid decimal of at most six places."""


def to_micros(value: Decimal | str | int, *, what: str = "amount", negative: bool = False) -> int:
    """``"12.50"`` -> 12_500_000. More than six decimal places, NaN or infinity (and a
    negative amount unless ``negative``) raise :class:`MoneyError`."""
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise MoneyError(f"{what} {value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise MoneyError(f"{what} {value!r} is not a finite number")
    micros = amount * SCALE
    if micros != micros.to_integral_value():
        raise MoneyError(f"{what} {value!r} has more than six decimal places")
    if micros < 0 and not negative:
        raise MoneyError(f"{what} {value!r} is negative")
    return int(micros)


def format_micros(micros: int) -> str:
    """12_500_000 -> ``"12.50"``; 595_000 -> ``"0.595"``: at least two decimal places, more
    only where the amount has them. Exact, for any integer."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(int(micros)), SCALE)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def cost_micros(price_per_second: int, millis: int) -> int:
    """``price_per_second`` micros for ``millis`` milliseconds, rounded half up."""
    return (int(price_per_second) * int(millis) + 500) // 1000


def _round(value: Decimal) -> int:
    return int((value * SCALE).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class PriceList:
    """Effective per-second prices: the catalog's list prices, the operator's overrides, a
    global multiplier and named price groups (a group's factor applies on top)."""

    currency: str = "CNY"
    multiplier: Decimal = Decimal(1)
    #: ``{"wan2.6-i2v.720P": Decimal, "wan2.6-i2v-flash.720P.silent": Decimal}``
    overrides: Mapping[str, Decimal] = field(default_factory=dict)
    groups: Mapping[str, Decimal] = field(default_factory=dict)
    #: effective prices already worked out (Decimal arithmetic is slow on the submit path)
    _known: dict[tuple[str, str, bool, str | None], int] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def list_price(self, spec: ModelSpec, resolution: str, audio: bool) -> Decimal:
        """Per second before multiplier and group: an override, else the catalog's."""
        audible = audio or spec.price_cny_silent is None
        name = f"{spec.name}.{resolution}" + ("" if audible else ".silent")
        if name in self.overrides:
            return self.overrides[name]
        return spec.price_per_second(resolution, audio)

    def price(self, spec: ModelSpec, resolution: str, audio: bool, group: str | None) -> int:
        """Micros per output second for a caller in ``group`` (``None``: no group)."""
        key = (spec.name, resolution, audio, group)
        known = self._known.get(key)
        if known is None:
            factor = self.multiplier * self.group_factor(group)
            known = _round(self.list_price(spec, resolution, audio) * factor)
            if len(self._known) < 4096:  # groups are few; a bound all the same
                self._known[key] = known
        return known

    def group_factor(self, group: str | None) -> Decimal:
        if group is None or group == "":
            return Decimal(1)
        return self.groups.get(group, Decimal(1))

    def table(self, spec: ModelSpec, group: str | None) -> dict[str, dict[str, str]]:
        """``{"720P": {"audio": "0.60", "silent": "0.30"}}``: what ``GET /v1/models`` shows."""
        out: dict[str, dict[str, str]] = {}
        for resolution in spec.resolutions:
            row: dict[str, str] = {}
            if spec.audio != "never":
                row["audio"] = format_micros(self.price(spec, resolution, True, group))
            if spec.audio != "always":
                row["silent"] = format_micros(self.price(spec, resolution, False, group))
            out[resolution] = row
        return out


def parse_overrides(value: str | Mapping[str, object] | None) -> dict[str, Decimal]:
    """``"wan2.6-i2v.720P=0.5, wan2.6-i2v-flash.720P.silent=0.1"`` (or a TOML table) to
    ``{name: Decimal}``; every name must be a catalog model and one of its tiers."""
    out: dict[str, Decimal] = {}
    for name, raw in _pairs(value, "STILLMOTION_PRICES"):
        model, _, rest = name.partition(".")
        tier, _, silent = rest.partition(".")
        spec = MODELS.get(model)
        if spec is None or tier not in spec.resolutions or silent not in ("", "silent"):
            raise MoneyError(
                f"STILLMOTION_PRICES entry {name!r} is not MODEL.TIER or MODEL.TIER.silent "
                "of a catalog model"
            )
        if silent and spec.price_cny_silent is None:
            raise MoneyError(f"{model} has no silent price ({name!r})")
        out[name] = Decimal(to_micros(raw, what=f"price {name}")) / SCALE
    return out


def parse_factors(value: str | Mapping[str, object] | None, setting: str) -> dict[str, Decimal]:
    """``"vip=0.8,wholesale=0.6"`` (or a TOML table) to ``{name: Decimal}`` (> 0)."""
    out: dict[str, Decimal] = {}
    for name, raw in _pairs(value, setting):
        factor = Decimal(to_micros(raw, what=f"{setting} {name}")) / SCALE
        if factor <= 0:
            raise MoneyError(f"{setting} {name}: the factor must be above 0")
        out[name] = factor
    return out


def _pairs(value: str | Mapping[str, object] | None, setting: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [(str(k).strip(), str(v)) for k, v in value.items()]
    pairs = []
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, raw = part.partition("=")
        if not sep or not name.strip() or not raw.strip():
            raise MoneyError(f"{setting} entry {part.strip()!r} is not NAME=VALUE")
        pairs.append((name.strip(), raw.strip()))
    return pairs
