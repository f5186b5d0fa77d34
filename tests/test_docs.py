"""The docs keep up with the code: every setting, endpoint and error code is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

from stillmotion import errors
from stillmotion.api.app import create_app
from stillmotion.config import Settings

ROOT = Path(__file__).resolve().parents[1]
INTERNAL_CODES = {"InternalError.LeaseLost", "Canceled", "Deferred"}  # never sent to clients


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`STILLMOTION_{name.upper()}`" in text, name


def test_every_endpoint_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text() + (ROOT / "README.md").read_text()
    app = create_app(Settings())
    for route in app.routes:
        path = getattr(route, "path", "")
        if path.startswith(("/docs", "/openapi", "/redoc")):
            continue
        doc_path = path.replace("{key:path}", "{key}")
        assert doc_path.split("{")[0] in text, path


def test_every_error_code_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.ServiceError) and cls.code not in INTERNAL_CODES:
            assert f"`{cls.code}`" in text, cls.__name__


def test_readme_quickstart_has_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1]
    blocks = quick.split("```bash")[1:3]
    commands = [b.split("```")[0].strip() for b in blocks]
    assert commands[0] == "pip install . && stillmotion serve"
    assert commands[1] == "pip install -e '.[test]' && scripts/check"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci
