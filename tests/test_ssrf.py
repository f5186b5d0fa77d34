"""The SSRF corpus through the real API: every vector as ``input.img_url`` and as
``input.audio_url``, submitted to the app with its worker running under the default policy.

Each vector is refused with ``InvalidURL``: at submit (400) or by the worker's fetch guard
(the task ends FAILED). Loopback listeners on the port every vector names must see no
connection, and a tripwire on the fetch's connect step keeps the test on loopback even if
the guard broke: it lets loopback connects through (for the listeners to witness) and stops
any other. Unit tests of the guard's pieces live in tests/test_media_fetch.py.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from stillmotion import errors
from stillmotion.config import Settings
from stillmotion.media import fetch
from stillmotion.runtime import Runtime
from tests.conftest import poll, seed_body

FIELDS = ("img_url", "audio_url")


# --------------------------------------------------------------------------- listeners


@dataclass
class Listeners:
    """Sockets listening on one port at 127.0.0.1, 127.0.0.2 and [::1]; never accepting, so
    any connection that reached them waits in their queues until :meth:`connections`."""

    port: int
    sockets: list[socket.socket] = field(default_factory=list)

    def connections(self) -> int:
        count = 0
        for sock in self.sockets:
            for _ in range(1000):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
        return count


def _listen(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _open_listeners() -> Listeners:
    for _ in range(20):  # a port free on all three addresses
        first = _listen(socket.AF_INET, "127.0.0.1", 0)
        port = int(first.getsockname()[1])
        try:
            others = [
                _listen(socket.AF_INET, "127.0.0.2", port),
                _listen(socket.AF_INET6, "::1", port),
            ]
        except OSError as exc:
            first.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return Listeners(port, [first, *others])
    raise AssertionError("no port free on 127.0.0.1, 127.0.0.2 and [::1]")


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    opened = _open_listeners()
    try:
        yield opened
    finally:
        for sock in opened.sockets:
            sock.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The address lists the fetch tried to connect to; non-loopback ones are stopped."""
    seen: list[list[str]] = []
    real = fetch._get_pinned

    async def tripwire(
        client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], *args: Any
    ) -> Any:
        seen.append(list(addresses))
        if all(ipaddress.ip_address(a).is_loopback for a in addresses):
            return await real(client, url, addresses, *args)
        raise errors.InputDownloadFailed("tripwire: a non-loopback connect was attempted")

    monkeypatch.setattr(fetch, "_get_pinned", tripwire)
    return seen


# --------------------------------------------------------------------------- the app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        workers=1,
        lease_seconds=5,
        poll_interval=0.05,
        allow_private_urls=False,  # the default policy under test
        key_cache_seconds=0,
        fetch_timeout=5,  # bounds a fetch that reached a (never answering) listener
    )


def _body(field_name: str, url: str) -> dict[str, Any]:
    body = seed_body(duration=2)
    body["input"][field_name] = url
    return body


async def _outcome(
    client: httpx.AsyncClient, auth: dict[str, str], bodies: dict[str, dict[str, Any]]
) -> dict[str, tuple[str, str]]:
    """Per case: ("submit", code) when refused at submit, else ("task", code) at its end."""
    outcome: dict[str, tuple[str, str]] = {}
    submitted: dict[str, str] = {}
    for case, body in bodies.items():
        resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
        if resp.status_code == 200:
            submitted[case] = resp.json()["output"]["task_id"]
        else:
            assert resp.status_code == 400, (case, resp.text)
            outcome[case] = ("submit", resp.json()["code"])
    ended = await asyncio.gather(*(poll(client, t, auth, timeout=90) for t in submitted.values()))
    for case, result in zip(submitted, ended, strict=True):
        out = result["output"]
        assert out["task_status"] == "FAILED", (case, out)
        outcome[case] = ("task", out["code"])
        _check_message(case, out["message"])
    return outcome


def _check_message(case: str, message: str) -> None:
    assert any(name in message for name in FIELDS), (case, message)
    if "private" in message:  # a non-public address: the setting that allows it is named
        assert "STILLMOTION_ALLOW_PRIVATE_URLS" in message, (case, message)


# --------------------------------------------------------------------------- the corpus


def corpus(port: int) -> dict[str, str]:
    """name -> URL; every network vector names the listeners' port."""
    hosts = {
        "loopback": "127.0.0.1",
        "loopback-other": "127.0.0.2",
        "localhost": "localhost",
        "localhost-upper-dot": "LOCALHOST.",
        "sub-localhost": "a.localhost",
        "unspecified": "0.0.0.0",
        "zero": "0",
        "short": "127.1",
        "decimal": "2130706433",
        "octal": "0177.0.0.1",
        "hex": "0x7f.0.0.1",
        "hex-whole": "0x7f000001",
        "v6-loopback": "[::1]",
        "v6-loopback-long": "[0:0:0:0:0:0:0:1]",
        "v6-unspecified": "[::]",
        "v4-mapped": "[::ffff:127.0.0.1]",
        "v4-mapped-hex": "[::ffff:7f00:1]",
        "nat64": "[64:ff9b::7f00:1]",
        "6to4": "[2002:7f00:1::]",
        "aws-metadata": "169.254.169.254",
        "aws-ecs-metadata": "169.254.170.2",
        "aws-metadata-v6": "[fd00:ec2::254]",
        "aws-metadata-mapped": "[::ffff:169.254.169.254]",
        "alibaba-metadata": "100.100.100.200",
        "azure-wire": "168.63.129.16",
        "link-local": "169.254.1.1",
        "private-10": "10.0.0.1",
        "private-10-top": "10.255.255.254",
        "private-172": "172.16.0.1",
        "private-172-top": "172.31.255.254",
        "private-192": "192.168.0.1",
        "private-192-top": "192.168.255.254",
        "cgnat": "100.64.0.1",
        "multicast": "224.0.0.1",
        "reserved": "240.0.0.1",
        "broadcast": "255.255.255.255",
        "v6-ula": "[fc00::1]",
        "v6-ula-fd": "[fd12:3456::1]",
        "v6-link-local": "[fe80::1]",
        "v6-zone": "[fe80::1%25lo]",
        "v6-multicast": "[ff02::1]",
    }
    urls = {name: f"http://{host}:{port}/a.png" for name, host in hosts.items()}
    urls |= {
        "https-loopback": f"https://127.0.0.1:{port}/a.png",
        "credentials": f"http://user:pass@127.0.0.1:{port}/a.png",
        "user-only": f"http://user@127.0.0.1:{port}/a.png",
        "userinfo-host-confusion": f"http://example.com@127.0.0.1:{port}/a.png",
        "backslash-confusion": f"http://127.0.0.1:{port}\\@example.com/a.png",
        "fragment-confusion": f"http://127.0.0.1:{port}#@example.com/a.png",
        "encoded-host": f"http://%31%32%37.0.0.1:{port}/a.png",
        "file": "file:///etc/passwd",
        "ftp": f"ftp://127.0.0.1:{port}/a.png",
        "gopher": f"gopher://127.0.0.1:{port}/_GET%20/",
        "dict": f"dict://127.0.0.1:{port}/info",
        "ws": f"ws://127.0.0.1:{port}/",
        "scheme-relative": f"//127.0.0.1:{port}/a.png",
        "data-wrong-mime": "data:text/plain;base64,aGVsbG8=",
    }
    return urls


#: Vectors refused for what they are, whatever the network: these must never reach a task.
SUBMIT_REFUSED = {"credentials", "user-only", "userinfo-host-confusion", "backslash-confusion",
                  "encoded-host", "file", "ftp", "gopher", "dict", "ws", "scheme-relative",
                  "zero", "short", "decimal", "octal", "hex", "hex-whole", "v6-zone",
                  "data-wrong-mime"}  # fmt: skip


@pytest.mark.parametrize("field_name", FIELDS)
async def test_ssrf_corpus_is_refused_and_nothing_is_reached(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    listeners: Listeners,
    connects: list[list[str]],
    field_name: str,
) -> None:
    await runtime.start_worker()
    urls = corpus(listeners.port)
    outcome = await _outcome(client, auth, {c: _body(field_name, u) for c, u in urls.items()})
    assert set(outcome) == set(urls)
    wrong = {c: o for c, o in outcome.items() if o[1] != "InvalidURL" and c != "data-wrong-mime"}
    assert wrong == {}
    assert outcome["data-wrong-mime"][0] == "submit"
    assert {c for c, (where, _) in outcome.items() if where == "submit"} >= SUBMIT_REFUSED
    assert connects == []
    assert listeners.connections() == 0


# --------------------------------------------------------------------------- redirects


class _Redirector(BaseHTTPRequestHandler):
    """``GET /r?to=URL`` answers 302 to URL; records each path it was asked for."""

    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hits.append(self.path)
        target = parse_qs(urlsplit(self.path).query)["to"][0]
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep quiet
        pass


@pytest.fixture
def redirector(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, list[str]]]:
    """A redirector reached as ``public.test``: the guard's two seams (resolver and address
    verdict) treat exactly 127.0.0.1 as a public address, nothing else."""
    hits: list[str] = []
    handler = type("Handler", (_Redirector,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    async def resolve(host: str, port: int) -> list[str]:
        if host == "public.test":
            return ["127.0.0.1"]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    real = fetch.address_refusal
    monkeypatch.setattr(fetch, "_resolve", resolve)
    monkeypatch.setattr(
        fetch, "address_refusal", lambda a, p: None if a == "127.0.0.1" else real(a, p)
    )
    try:
        yield int(server.server_address[1]), hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


REDIRECT_TARGETS = ["loopback-other", "unspecified", "decimal", "v6-loopback", "v4-mapped",
                    "nat64", "aws-metadata", "alibaba-metadata", "private-10", "private-172",
                    "private-192", "cgnat", "v6-ula", "v6-link-local", "credentials", "file",
                    "gopher"]  # fmt: skip


@pytest.mark.parametrize("field_name", FIELDS)
async def test_redirects_to_the_corpus_are_refused_at_the_hop(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    listeners: Listeners,
    connects: list[list[str]],
    redirector: tuple[int, list[str]],
    field_name: str,
) -> None:
    await runtime.start_worker()
    port, hits = redirector
    urls = corpus(listeners.port)
    bodies = {
        case: _body(field_name, f"http://public.test:{port}/r?to={quote(urls[case], safe='')}")
        for case in REDIRECT_TARGETS
    }
    outcome = await _outcome(client, auth, bodies)
    assert outcome == {case: ("task", "InvalidURL") for case in REDIRECT_TARGETS}
    assert len(hits) == len(REDIRECT_TARGETS)  # each first hop was fetched, once
    assert connects == [["127.0.0.1"]] * len(REDIRECT_TARGETS)  # and nothing after it
    assert listeners.connections() == 0
