"""Imports go one way (docs/architecture.md): lower layers never import higher ones.

Every import of every module under ``stillmotion/`` is resolved to the module it loads, in
all its forms: ``import stillmotion.x``, ``from stillmotion.x import y``, ``from stillmotion
import x`` (``x`` a module: that module; an attribute: the package), and relative imports
(``from . import x``, ``from ..tasks import y``), resolved against the file's own package.
The target's unit (a top-level module or package of ``stillmotion``) must be the importer's
own unit or one its rule allows. Every unit has a rule: a new one fails until it gets one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "stillmotion"
ROOT = "stillmotion"

#: unit -> what it may import besides itself and the root package (whose ``__init__``
#: imports nothing: it only holds ``__version__``). An entry is a unit, or a dotted module
#: when only that one module of a unit is allowed.
ALLOWED: dict[str, frozenset[str]] = {
    name: frozenset(allowed)
    for name, allowed in {
        # the bottom: import nothing of ours
        "__init__": (),
        "catalog": (),
        # exact amounts and the price list, over the catalog's list prices
        "money": ("catalog",),
        "domain": (),
        # random ids on the hot path
        "ids": (),
        "errors": (),
        "config": (),
        # operations: Prometheus metrics and the log context/JSON format (docs/operations.md);
        # every layer that records or logs may import them
        "metrics": (),
        "logfmt": (),
        # the middle (engines/__init__.py: domain, catalog, errors, media and storage)
        "media": ("catalog", "domain", "errors"),
        "storage": ("catalog", "domain", "errors"),
        "engines": ("catalog", "domain", "errors", "media", "storage", "metrics"),
        "tasks": (
            *("catalog", "domain", "errors", "media", "storage", "money", "ids"),
            *("metrics", "logfmt"),
            # the relays' limit arithmetic, kept in the database (tasks/relay_limits.py)
            "engines.relay_limits",
        ),
        # the wiring
        "worker": (
            *("catalog", "domain", "errors", "media", "storage", "engines", "tasks", "money"),
            *("metrics", "logfmt"),
        ),
        # runtime builds the task renderer it hands to the service; nothing else of api
        "runtime": (
            *("catalog", "domain", "errors", "config", "media", "storage", "engines"),
            *("tasks", "worker", "money"),
        ),
        "api": (
            *("catalog", "domain", "errors", "config", "media", "storage", "engines"),
            *("tasks", "runtime", "money", "ids", "metrics", "logfmt"),
        ),
        # the shipped fakes and test helpers: lower layers only; only cli (the
        # ``fake-dashscope`` command), tests and bench import them
        "testing": ("catalog", "domain", "errors", "media"),
        # the SDK (docs/client.md): nothing else of stillmotion, so it can ship alone
        "client": (),
        "cli_generate": ("client",),
        # what the admin commands share, and the billing commands (accounts, usage, billing)
        "cli_common": ("config", "runtime", "tasks"),
        "cli_accounts": ("cli_common", "config", "money", "tasks"),
        "cli_billing": ("cli_common", "cli_accounts", "money", "tasks"),
        "cli_webhooks": ("cli_common", "config", "errors", "tasks"),
        "cli": (
            *("catalog", "domain", "errors", "config", "runtime", "api", "tasks"),
            *("testing", "cli_generate", "cli_common", "cli_accounts", "cli_billing", "money"),
            "cli_webhooks",
            *("metrics", "logfmt"),
        ),
        # the console script and ``python -m stillmotion``: tiny on purpose
        "_entry": ("cli",),
        "__main__": ("cli",),
    }.items()
}

#: engines/: shared modules at the top (relay_limits: every relay's), and one subpackage per
#: family (``engines/wan/``). A family imports the shared modules and its own family only;
#: shared modules import no family.
ENGINE_SHARED = frozenset({"__init__", "base", "registry", "relay_limits", "relay"})
ENGINE_FAMILIES = ("motion", "dashscope", "wan", "openai_videos")

FILES = sorted(PKG.rglob("*.py"))


def _module_name(rel: Path) -> str:
    parts = [ROOT, *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """Whether the dotted ``name`` is a module or package of ours on disk."""
    parts = name.split(".")
    if parts[0] != ROOT:
        return False
    path = PKG.joinpath(*parts[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(rel: Path, source: str) -> set[str]:
    """The modules of ours that ``source`` (the file ``rel`` under stillmotion/) imports."""
    own = _module_name(rel)
    package = own if rel.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                assert node.level <= len(parts), f"{rel}: relative import above the package"
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _is_module(sub) else module)
    return {name for name in found if name == ROOT or name.startswith(ROOT + ".")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(rel: Path, source: str) -> list[str]:
    unit = rel.parts[0].removesuffix(".py")
    if unit not in ALLOWED:
        return [f"{unit} has no rule in ALLOWED"]
    allowed = ALLOWED[unit]
    bad = []
    for module in sorted(imported_modules(rel, source)):
        if module == ROOT:  # the root package itself (``from stillmotion import __version__``)
            continue
        target = _unit(module)
        inner = module.removeprefix(ROOT + ".")
        if target == unit or target in allowed:
            continue
        if any(inner == entry or inner.startswith(entry + ".") for entry in allowed):
            continue
        bad.append(f"{unit} imports {module}")
    return bad


def _family(name: str) -> str | None:
    """The family of ``engines/<name>`` (a module stem or a subpackage); None: shared."""
    if name in ENGINE_SHARED:
        return None
    if name in ENGINE_FAMILIES:
        return name
    raise AssertionError(f"engines/{name} is neither shared nor in a family {ENGINE_FAMILIES}")


def family_violations(rel: Path, source: str) -> list[str]:
    """``rel`` relative to the package: ``engines/base.py`` or ``engines/wan/loader.py``."""
    inner = rel.parts[1:]
    own = _family(inner[0] if len(inner) > 1 else rel.stem)
    bad = []
    for module in sorted(imported_modules(rel, source)):
        parts = module.split(".")
        if parts[:2] != [ROOT, "engines"] or len(parts) < 3:
            continue
        theirs = _family(parts[2])
        if theirs is not None and theirs != own:
            bad.append(f"engines/{'/'.join(inner)} ({own or 'shared'}) imports {module} ({theirs})")
    return bad


def _units_on_disk() -> set[str]:
    units = {path.stem for path in PKG.glob("*.py")}
    units |= {d.name for d in PKG.iterdir() if d.is_dir() and any(d.rglob("*.py"))}
    return units


def test_every_unit_has_a_rule() -> None:
    # a new top-level module or package fails here until the table above says what it may
    # import; a removed one fails until its rule goes
    assert _units_on_disk() == set(ALLOWED)
    for unit, allowed in ALLOWED.items():
        for entry in allowed:
            assert _is_module(f"{ROOT}.{entry}"), f"{unit}: {entry} is no module"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down(path: Path) -> None:
    rel = path.relative_to(PKG)
    assert layer_violations(rel, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "path",
    sorted((PKG / "engines").rglob("*.py")),
    ids=lambda p: str(p.relative_to(PKG)),
)
def test_engine_families_do_not_import_each_other(path: Path) -> None:
    rel = path.relative_to(PKG)
    assert family_violations(rel, path.read_text(encoding="utf-8")) == []


# -- the checker itself: every import form resolves, and a reach upward is caught ----------


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("domain.py", "from stillmotion import runtime, worker", {"runtime", "worker"}),
        ("domain.py", "from stillmotion import __version__", {""}),
        ("domain.py", "import stillmotion.tasks.store as s", {"tasks.store"}),
        ("domain.py", "from stillmotion.engines import motion", {"engines.motion"}),
        ("domain.py", "from stillmotion.engines.motion import X", {"engines.motion"}),
        ("domain.py", "from . import runtime", {"runtime"}),
        ("tasks/store.py", "from . import db", {"tasks.db"}),
        ("tasks/store.py", "from .rows import TaskRow", {"tasks.rows"}),
        ("tasks/store.py", "from ..worker import runner", {"worker.runner"}),
        ("tasks/store.py", "from .. import api", {"api"}),
        ("tasks/store.py", "from ..api.render import TaskRenderer", {"api.render"}),
        ("tasks/__init__.py", "from . import store", {"tasks.store"}),
        ("tasks/__init__.py", "from ..engines import wan", {"engines.wan"}),
        ("tasks/migrations/env.py", "from ...runtime import X", {"runtime"}),
        ("domain.py", "def f():\n    from stillmotion import cli", {"cli"}),
        ("domain.py", "import os\nfrom pathlib import Path", set()),
    ],
)
def test_every_import_form_is_resolved(rel: str, source: str, expected: set[str]) -> None:
    found = imported_modules(Path(rel), source)
    assert found == {f"{ROOT}.{m}" if m else ROOT for m in expected}


@pytest.mark.parametrize(
    ("rel", "source"),
    [
        ("domain.py", "from stillmotion import runtime, worker"),
        ("domain.py", "from . import config"),
        ("catalog.py", "from stillmotion.errors import ServiceError"),
        ("errors.py", "from stillmotion import catalog"),
        ("media/probe.py", "from stillmotion.storage import base"),
        ("media/probe.py", "from ..testing import images"),
        ("storage/local.py", "from ..media import fetch"),
        ("engines/motion/engine.py", "from stillmotion.tasks import store"),
        ("engines/motion/engine.py", "from stillmotion import config"),
        ("runtime.py", "from stillmotion.api.render import TaskRenderer"),
        ("tasks/service.py", "from stillmotion.engines import base"),
        ("tasks/service.py", "from ..worker import runner"),
        ("tasks/service.py", "from stillmotion import config"),
        ("worker/runner.py", "from stillmotion.api import deps"),
        ("worker/runner.py", "from stillmotion import runtime"),
        ("runtime.py", "from stillmotion.api import deps"),
        ("runtime.py", "from stillmotion.api import app"),
        ("runtime.py", "import stillmotion.api"),
        ("api/app.py", "from stillmotion import cli"),
        ("api/app.py", "from stillmotion.testing import fake_dashscope"),
        ("runtime.py", "from stillmotion.testing import images"),
        ("testing/fake_dashscope.py", "from stillmotion.tasks import store"),
        ("testing/fake_dashscope.py", "from stillmotion.engines import dashscope"),
        ("client/_core.py", "from stillmotion import errors"),
        ("client/_core.py", "from stillmotion.api import schemas"),
        ("client/_core.py", "from ..runtime import Runtime"),
        ("cli_generate.py", "from stillmotion.runtime import Runtime"),
        ("_entry.py", "from stillmotion.api.app import create_app"),
        ("config.py", "from stillmotion.catalog import MODELS"),
    ],
)
def test_a_reach_upward_is_caught(rel: str, source: str) -> None:
    assert layer_violations(Path(rel), source)


@pytest.mark.parametrize(
    ("rel", "source"),
    [
        ("engines/wan/engine.py", "from stillmotion.engines.motion.render import Watermark"),
        ("engines/wan/engine.py", "from stillmotion.engines import motion"),
        ("engines/wan/engine.py", "from ..dashscope import client"),
        ("engines/motion/render.py", "from ..wan.config import WanOptions"),
        ("engines/dashscope/poll.py", "import stillmotion.engines.motion.plan"),
        ("engines/base.py", "from stillmotion.engines.wan import WanEngine"),
        ("engines/registry.py", "from . import motion"),
        ("engines/relay_limits.py", "from .dashscope.channels import Channel"),
    ],
)
def test_a_cross_family_import_is_caught(rel: str, source: str) -> None:
    assert family_violations(Path(rel), source)


def test_a_family_may_import_itself_and_the_shared_modules() -> None:
    source = "from . import loader\nfrom .. import base\nfrom ..registry import available\n"
    source += "import stillmotion\nfrom stillmotion.engines.relay_limits import Limit"
    assert family_violations(Path("engines/wan/engine.py"), source) == []
    with pytest.raises(AssertionError, match="neither shared nor in a family"):
        family_violations(Path("engines/sora.py"), "")
    with pytest.raises(AssertionError, match="neither shared nor in a family"):
        family_violations(Path("engines/sora/engine.py"), "")


def test_engines_do_not_import_heavy_things_at_module_level() -> None:
    for path in (PKG / "engines").rglob("*.py"):
        top = ast.parse(path.read_text()).body
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not {"torch", "diffusers", "fastapi"} & {n.split(".")[0] for n in names}, path
