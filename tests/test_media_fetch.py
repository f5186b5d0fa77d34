"""stillmotion.media.fetch against real HTTP(S) servers on loopback."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from stillmotion import errors
from stillmotion.media import fetch
from stillmotion.media.fetch import FetchPolicy, check_host, check_url_syntax, fetch_to_file

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
PRIVATE = FetchPolicy(allow_private=True, timeout=5.0)


# --------------------------------------------------------------------------- test server


@dataclass
class Server:
    base: str  # e.g. http://127.0.0.1:PORT
    port: int
    paths: list[str] = field(default_factory=list)  # request paths in arrival order
    hosts: list[str] = field(default_factory=list)  # Host headers in arrival order


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.record.paths.append(self.path)
        self.server.record.hosts.append(self.headers.get("Host", ""))
        self.close_connection = True
        route, _, _ = urlsplit(self.path).path.strip("/").partition("/")
        getattr(self, f"route_{route.replace('-', '_')}", self.route_missing)()

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {"Connection": "close", **headers}.items():
            self.send_header(key, value)
        self.end_headers()

    def _arg(self, name: str) -> str:
        return parse_qs(urlsplit(self.path).query)[name][0]

    def route_ok(self) -> None:
        self._head(200, {"Content-Type": "image/PNG; q=1", "Content-Length": str(len(PAYLOAD))})
        self.wfile.write(PAYLOAD)

    def route_host(self) -> None:
        body = self.headers.get("Host", "").encode()
        self._head(200, {"Content-Length": str(len(body))})
        self.wfile.write(body)

    def route_redirect(self) -> None:
        self._head(302, {"Location": self._arg("to"), "Content-Length": "0"})

    def route_chain(self) -> None:  # /chain/N: N more redirects (relative), then /ok
        n = int(self.path.rsplit("/", 1)[1])
        self._head(302, {"Location": f"/chain/{n - 1}" if n > 1 else "/ok", "Content-Length": "0"})

    def route_big_cl(self) -> None:  # claims 10 MB, sends 100 bytes
        self._head(200, {"Content-Length": str(10 * 1024 * 1024)})
        self.wfile.write(b"x" * 100)

    def route_chunked(self) -> None:  # /chunked/N: N bytes, chunked, no Content-Length
        n = int(self.path.rsplit("/", 1)[1])
        self._head(200, {"Transfer-Encoding": "chunked"})
        for start in range(0, n, 1000):
            piece = b"y" * min(1000, n - start)
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def route_hang(self) -> None:  # never answers (until teardown)
        self.server.stop.wait(10)

    def route_hang_body(self) -> None:  # headers, then nothing
        self._head(200, {"Content-Length": "1000"})
        self.wfile.write(b"z" * 10)
        self.wfile.flush()
        self.server.stop.wait(10)

    def route_missing(self) -> None:
        self._head(404, {"Content-Length": "0"})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    record: Server
    stop: threading.Event


@pytest.fixture(scope="module")
def make_server() -> Iterator[Callable[[ssl.SSLContext | None], Server]]:
    servers: list[_HTTPServer] = []

    def start(tls: ssl.SSLContext | None = None) -> Server:
        httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        port = httpd.server_address[1]
        httpd.record = Server(f"{'https' if tls else 'http'}://127.0.0.1:{port}", port)
        httpd.stop = threading.Event()
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}).start()
        servers.append(httpd)
        return httpd.record

    yield start
    for httpd in servers:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(make_server: Callable[[ssl.SSLContext | None], Server]) -> Server:
    return make_server(None)


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Resolve names from ``table`` instead of DNS; returns the list of names looked up."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    return asked


# --------------------------------------------------------------------------- URL syntax


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "oss://dashscope-instant/a.png",
        "data:image/png;base64,AAAA",
        "//example.com/a.png",
        "http:/example.com/a.png",
        "http:///a.png",
        "https://user:secret@example.com/a.png",
        "https://@example.com/a.png",
        "http://exa mple.com/a.png",
        "http://example.com\\@evil.com/a.png",
        "http://example.com:99999/a.png",
        "http://2130706433/a.png",
        "http://0x7f.1/a.png",
        "http://%31%32%37.0.0.1/a.png",
        "http://[fe80::1%25eth0]/a.png",
        "",
    ],
)
def test_check_url_syntax_refuses(url: str) -> None:
    with pytest.raises(errors.InvalidURL) as info:
        check_url_syntax(url, "img_url")
    assert info.value.status == 400 and info.value.code == "InvalidURL"
    assert isinstance(info.value, errors.InvalidParameter)
    assert info.value.message.startswith("img_url")
    assert "secret" not in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.png?sig=1#x",
        "HTTP://Example.COM:8080/a",
        "http://[::1]/a",
        "https://bücher.de/",
    ],
)
def test_check_url_syntax_accepts(url: str) -> None:
    check_url_syntax(url, "img_url")  # raises on refusal


def _accepts(check: Callable[[str, str], object], url: str) -> bool:
    try:
        check(url, "img_url")
    except errors.InvalidURL as exc:
        assert exc.message.startswith("img_url ")
        return False
    return True


def test_check_url_syntax_fast_path_agrees_with_the_full_parse() -> None:
    """Plain URLs skip the full parse at submit time; both must give the same verdict."""
    hosts = ["example.com", "EXAMPLE.com.", "a-b.example", "-bad.example", "bad-.example",
             "1.2.3.4", "999.1.1.1", "127.1", "2130706433", "0x7f.1", "a..b", ".", "x" * 64,
             "localhost", "xn--bcher-kva.de", "1.2.3", "123.example"]  # fmt: skip
    ports = ["", ":0", ":1", ":80", ":65535", ":65536", ":99999"]
    paths = ["", "/", "/a.png?sig=1&x=%2F#frag", "?q", "#f", "/a b", "/a\\b", "/@x", "/ü"]
    urls = [f"{scheme}://{host}{port}{path}" for scheme in ("http", "HTTPS", "ftp")
            for host in hosts for port in ports for path in paths]  # fmt: skip
    fast = [u for u in urls if fetch._PLAIN_URL.fullmatch(u)]
    assert len(fast) > len(urls) // 3  # the fast path really is taken
    for url in urls:
        assert _accepts(check_url_syntax, url) == _accepts(fetch._parse_url, url), url
    assert {_accepts(check_url_syntax, u) for u in fast} == {True, False}


# --------------------------------------------------------------------------- SSRF guard


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "::1", "[::1]", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1",
        "100.64.0.1", "224.0.0.1", "0.0.0.0", "240.0.0.1", "::", "fc00::1", "fe80::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::",
    ],
)  # fmt: skip
async def test_check_host_refuses_non_public(host: str) -> None:
    with pytest.raises(errors.InvalidURL, match="may not be fetched"):
        await check_host(host, 80, FetchPolicy())


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254",
     "64:ff9b::a9fe:a9fe"],
)  # fmt: skip
async def test_check_host_refuses_metadata_even_when_private_allowed(host: str) -> None:
    with pytest.raises(errors.InvalidURL, match="metadata"):
        await check_host(host, 80, PRIVATE)


async def test_private_refusal_names_the_setting_that_allows_it() -> None:
    with pytest.raises(errors.InvalidURL) as info:
        await check_host("10.1.2.3", 80, FetchPolicy())
    assert "STILLMOTION_ALLOW_PRIVATE_URLS=1" in info.value.message
    relay = FetchPolicy(allow_setting="STILLMOTION_DASHSCOPE_ALLOW_PRIVATE")
    with pytest.raises(errors.InvalidURL, match="STILLMOTION_DASHSCOPE_ALLOW_PRIVATE=1"):
        await check_host("10.1.2.3", 80, relay)
    with pytest.raises(errors.InvalidURL) as info:  # no setting allows metadata addresses
        await check_host("169.254.169.254", 80, PRIVATE)
    assert "ALLOW" not in info.value.message


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST", "a.b.localhost"])
async def test_localhost_names_refused_without_a_lookup(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    asked = fake_dns(monkeypatch, {})
    with pytest.raises(errors.InvalidURL, match="STILLMOTION_ALLOW_PRIVATE_URLS"):
        await check_host(host, 80, FetchPolicy())
    assert asked == []
    with pytest.raises(errors.InputDownloadFailed):  # allowed: resolved like any name
        await check_host(host, 80, PRIVATE)
    assert asked == [host]


async def test_check_host_public_and_allowed_private_pass() -> None:
    assert await check_host("8.8.8.8", 443, FetchPolicy()) == ["8.8.8.8"]
    assert await check_host("2606:4700:4700::1111", 443, FetchPolicy()) == ["2606:4700:4700::1111"]
    assert await check_host("10.0.0.1", 80, PRIVATE) == ["10.0.0.1"]


async def test_check_host_resolves_localhost_and_refuses() -> None:
    with pytest.raises(errors.InvalidURL, match="localhost"):
        await check_host("localhost", 80, FetchPolicy())


async def test_check_host_refuses_if_any_address_is_private(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"mixed.test": ["93.184.215.14", "10.0.0.7"]})
    with pytest.raises(errors.InvalidURL):
        await check_host("mixed.test", 80, FetchPolicy())
    assert await check_host("mixed.test", 80, PRIVATE) == ["93.184.215.14", "10.0.0.7"]


async def test_check_host_unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    with pytest.raises(errors.InputDownloadFailed, match="resolve"):
        await check_host("nowhere.test", 80, FetchPolicy())


# --------------------------------------------------------------------------- fetching


async def test_fetch_ok(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "in.png"
    got = await fetch_to_file(f"{server.base}/ok?sig=abc", dest, PRIVATE)
    assert got.path == dest and dest.read_bytes() == PAYLOAD
    assert got.size == len(PAYLOAD)
    assert got.content_type == "image/png"
    assert got.final_url == f"{server.base}/ok?sig=abc"
    assert list(tmp_path.iterdir()) == [dest]


async def test_fetch_with_callers_client_leaves_it_open(server: Server, tmp_path: Path) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        got = await fetch_to_file(f"{server.base}/ok", tmp_path / "a", PRIVATE, client=client)
        assert got.size == len(PAYLOAD)
        assert not client.is_closed


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_default_policy_refuses_loopback(server: Server, tmp_path: Path, host: str) -> None:
    dest = tmp_path / "x"
    with pytest.raises(errors.InvalidURL, match="img_url"):
        await fetch_to_file(f"http://{host}:{server.port}/ok", dest, FetchPolicy())
    assert server.paths == [] and not dest.exists()


async def test_fetch_connects_to_the_checked_address(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once, by the guard; httpx connects to that address (the name
    itself does not resolve anywhere else) and sends the original Host."""
    asked = fake_dns(monkeypatch, {"pinned.test": ["127.0.0.1"]})
    got = await fetch_to_file(f"http://pinned.test:{server.port}/host", tmp_path / "h", PRIVATE)
    assert (tmp_path / "h").read_text() == f"pinned.test:{server.port}"
    assert asked == ["pinned.test"]
    assert got.final_url == f"http://pinned.test:{server.port}/host"


async def test_fetch_falls_back_to_next_address(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"two.test": ["127.0.0.2", "127.0.0.1"]})  # nothing on 127.0.0.2
    got = await fetch_to_file(f"http://two.test:{server.port}/ok", tmp_path / "a", PRIVATE)
    assert got.size == len(PAYLOAD)
    assert server.paths == ["/ok"]


async def test_redirect_to_metadata_is_refused_at_the_hop(server: Server, tmp_path: Path) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(errors.InvalidURL, match="after a redirect.*metadata"):
        await fetch_to_file(f"{server.base}/redirect?to={target}", tmp_path / "a", PRIVATE)
    assert len(server.paths) == 1


async def test_redirect_to_private_refused_under_default_policy(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 'public' host (per our fake DNS) that redirects to a private address."""
    fake_dns(monkeypatch, {"public.test": ["127.0.0.1"]})
    monkeypatch.setattr(
        fetch, "address_refusal", lambda a, p: None if a == "127.0.0.1" else "private"
    )
    url = f"http://public.test:{server.port}/redirect?to=http://10.0.0.1/a.png"
    with pytest.raises(errors.InvalidURL, match="after a redirect"):
        await fetch_to_file(url, tmp_path / "a", FetchPolicy(timeout=5))
    assert len(server.paths) == 1


async def test_redirect_to_other_scheme_is_refused(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/redirect?to=file:///etc/passwd"
    with pytest.raises(errors.InvalidURL, match="http or https"):
        await fetch_to_file(url, tmp_path / "a", PRIVATE)


async def test_relative_redirects_are_followed_up_to_the_limit(
    server: Server, tmp_path: Path
) -> None:
    policy = FetchPolicy(allow_private=True, timeout=5, max_redirects=3)
    got = await fetch_to_file(f"{server.base}/chain/3", tmp_path / "a", policy)
    assert got.final_url == f"{server.base}/ok" and got.size == len(PAYLOAD)
    assert server.paths == ["/chain/3", "/chain/2", "/chain/1", "/ok"]


async def test_too_many_redirects(server: Server, tmp_path: Path) -> None:
    policy = FetchPolicy(allow_private=True, timeout=5, max_redirects=3)
    with pytest.raises(errors.InputDownloadFailed, match="more than 3"):
        await fetch_to_file(f"{server.base}/chain/4", tmp_path / "a", policy)
    assert len(server.paths) == 4  # the original request and 3 redirects, no more


async def test_content_length_over_cap(server: Server, tmp_path: Path) -> None:
    policy = FetchPolicy(allow_private=True, timeout=5, max_bytes=1024 * 1024)
    with pytest.raises(errors.TooLarge) as info:
        await fetch_to_file(f"{server.base}/big-cl", tmp_path / "a", policy)
    assert info.value.code == "BadRequest.TooLarge" and info.value.status == 413
    assert "1 MB" in info.value.message
    assert list(tmp_path.iterdir()) == []


async def test_chunked_body_over_cap(server: Server, tmp_path: Path) -> None:
    policy = FetchPolicy(allow_private=True, timeout=5, max_bytes=5000)
    with pytest.raises(errors.TooLarge, match="audio_url"):
        await fetch_to_file(
            f"{server.base}/chunked/50000", tmp_path / "a", policy, what="audio_url"
        )
    assert list(tmp_path.iterdir()) == []


async def test_chunked_body_at_cap_is_fine(server: Server, tmp_path: Path) -> None:
    policy = FetchPolicy(allow_private=True, timeout=5, max_bytes=5000)
    got = await fetch_to_file(f"{server.base}/chunked/5000", tmp_path / "a", policy)
    assert got.size == 5000 and (tmp_path / "a").read_bytes() == b"y" * 5000
    assert got.content_type is None


async def test_http_404_is_input_download_failed(server: Server, tmp_path: Path) -> None:
    with pytest.raises(errors.InputDownloadFailed) as info:
        await fetch_to_file(f"{server.base}/missing?token=SECRET", tmp_path / "a", PRIVATE)
    assert info.value.code == "BadRequest.InputDownloadFailed" and info.value.status == 415
    assert "HTTP 404" in info.value.message and "127.0.0.1" in info.value.message
    assert "SECRET" not in info.value.message and "missing" not in info.value.message


async def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(errors.InputDownloadFailed, match="connect"):
        await fetch_to_file(f"http://127.0.0.1:{port}/a", tmp_path / "a", PRIVATE)


@pytest.mark.parametrize("path", ["/hang", "/hang-body"])
async def test_hanging_server_times_out(server: Server, tmp_path: Path, path: str) -> None:
    policy = FetchPolicy(allow_private=True, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(errors.InputDownloadFailed, match="timed out"):
        await fetch_to_file(f"{server.base}{path}", tmp_path / "a", policy)
    assert time.monotonic() - started > 0.4  # no upper bound: a busy machine only adds
    assert list(tmp_path.iterdir()) == []


async def test_bad_syntax_refused_before_any_request(server: Server, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidURL):
        await fetch_to_file(f"ftp://127.0.0.1:{server.port}/ok", tmp_path / "a", PRIVATE)
    assert server.paths == []


# --------------------------------------------------------------------------- HTTPS pinning


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for pinned.test (openssl ships with Debian's ca-certificates)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=pinned.test", "-addext", "subjectAltName=DNS:pinned.test"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_fetch(
    make_server: Callable[[ssl.SSLContext | None], Server],
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str], Awaitable[fetch.Fetched]]:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = make_server(server_ctx)
    fake_dns(monkeypatch, {"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})

    async def get(host: str) -> fetch.Fetched:
        verify = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
            url = f"https://{host}:{srv.port}/host"
            return await fetch_to_file(url, tmp_path / "h", PRIVATE, client=client)

    return get


async def test_https_pinned_keeps_sni_and_verifies_the_name(
    tls_fetch: Callable[[str], Awaitable[fetch.Fetched]],
) -> None:
    got = await tls_fetch("pinned.test")
    assert got.path.read_text().startswith("pinned.test:")


async def test_https_certificate_for_another_name_fails(
    tls_fetch: Callable[[str], Awaitable[fetch.Fetched]],
) -> None:
    with pytest.raises(errors.InputDownloadFailed, match="other.test"):
        await tls_fetch("other.test")
