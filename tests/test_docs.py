"""The docs keep up with the code: every setting, endpoint and error code is documented."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.routing import Mount

from stillmotion import errors
from stillmotion.api.app import create_app
from stillmotion.api.errors import _HTTP_CODES
from stillmotion.config import Settings

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "stillmotion"
INTERNAL_CODES = {"InternalError.LeaseLost", "Canceled", "Deferred"}  # never sent to clients


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`STILLMOTION_{name.upper()}`" in text, name


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(method, path)`` of every route, included routers and mounts too."""
    for route in routes:
        context = getattr(route, "include_context", None)  # a router included lazily
        if context is not None:
            yield from _routes(context.included_router.routes, prefix + context.prefix)
        elif isinstance(route, Mount):
            yield "", prefix + route.path + "/"  # what it serves is under it
        else:
            for method in sorted(route.methods or ()):
                yield method, prefix + route.path


def _documented(text: str, method: str, path: str) -> bool:
    """``METHOD /the/{whole}/template`` in ``text``, not followed by more path."""
    mention = f"{method} {path}" if method else path
    return re.search(re.escape(mention) + r"(?![\w/{}.-])", text) is not None


def test_every_endpoint_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    app = create_app(Settings())
    # ``{key:path}`` is ``{key}`` in the docs, as in the OpenAPI document
    routes = {(m, re.sub(r"\{(\w+):\w+\}", r"{\1}", p)) for m, p in _routes(app.routes)}
    # the walk misses no router: every path of the OpenAPI document is among its routes
    assert set(app.openapi()["paths"]) <= {path for _, path in routes}
    for method, path in sorted(routes):
        if method == "HEAD" and ("GET", path) in routes:
            continue  # the GET's section says HEAD is supported
        assert _documented(text, method, path), f"{method} {path}"


def test_the_endpoint_check_reads_whole_paths() -> None:
    text = "## `POST /task/{task_id}/cancel`\n`GET /api/v1/tasks/{task_id}`"
    assert _documented(text, "POST", "/task/{task_id}/cancel")
    assert not _documented(text, "POST", "/task/{task_id}")
    assert not _documented(text, "GET", "/api/v1/tasks")
    assert not _documented(text, "GET", "/task/{task_id}/cancel")


def _code_prefixes() -> set[str]:
    codes = {cls.code for cls in _error_classes()} | set(_HTTP_CODES.values())
    return {code.split(".")[0] for code in codes}


def _error_classes() -> list[type[errors.ServiceError]]:
    members = inspect.getmembers(errors, inspect.isclass)
    return [cls for _, cls in members if issubclass(cls, errors.ServiceError)]


def codes_in_source() -> dict[str, set[str]]:
    """Every error code the package's code can send: the codes of the classes in errors.py
    and every string literal anywhere shaped like one (``"InternalError.PollFailed"``, a
    prefix of errors.py's or the HTTP mapping's codes), with where it is.

    ``stillmotion/testing`` (the fake upstream's codes) and ``stillmotion/client`` (the SDK
    reading codes) send none of ours."""
    pattern = re.compile(rf"({'|'.join(sorted(_code_prefixes()))})(\.[A-Za-z]+)*")
    found: dict[str, set[str]] = {}
    for cls in _error_classes():
        found.setdefault(cls.code, set()).add(f"class {cls.__name__}")
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("testing", "client"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if pattern.fullmatch(node.value):
                    found.setdefault(node.value, set()).add(f"{rel}:{node.lineno}")
    return found


def error_table(text: str) -> set[str]:
    """The codes in the second column of the "## Error codes" table."""
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # no header
    return {m.group(1) for row in rows if (m := re.match(r"\|[^|]*\|\s*`([^`]+)`\s*\|", row))}


def test_every_error_code_is_documented() -> None:
    table = error_table((ROOT / "docs" / "api.md").read_text())
    sent = codes_in_source()
    for code, where in sorted(sent.items()):
        if code not in INTERNAL_CODES:
            assert code in table, f"{code} ({', '.join(sorted(where))}) is not in docs/api.md"
    # and the table lists nothing the code cannot send
    assert table <= set(sent) - INTERNAL_CODES


def test_the_code_scan_finds_codes_defined_as_strings() -> None:
    sent = codes_in_source()
    for code in (
        "InternalError.SubmitUnknown",
        "InternalError.PollFailed",
        "InternalError.ResultDownload",
        "InternalError.WorkerLost",
        "MethodNotAllowed",
    ):
        assert any(":" in where for where in sent[code]), code
    assert "stillmotion" not in sent and "InternalError." not in sent


def test_readme_quickstart_has_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1]
    blocks = quick.split("```bash")[1:3]
    commands = [b.split("```")[0].strip() for b in blocks]
    assert commands[0] == "pip install . && stillmotion serve"
    assert commands[1] == "pip install -e '.[test]' && scripts/check"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci
