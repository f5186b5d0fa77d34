"""Fetching ``img_url`` / ``audio_url`` safely: syntax checks, an SSRF guard, pinned connections.

* :func:`check_url_syntax` runs at submit time, without the network.
* :func:`check_host` resolves a host and refuses private, loopback, link-local, multicast,
  reserved, unspecified, CGNAT and cloud-metadata addresses (metadata ones always).
* :func:`fetch_to_file` connects to the address that was checked (keeping ``Host`` and TLS
  SNI/verification on the original name, so DNS rebinding between check and connect gains
  nothing), follows redirects by hand re-checking every hop, caps the body size and the whole
  fetch's time, and turns every transport failure into :class:`errors.InputDownloadFailed`.

Error messages name the request field and the host only, never the path or query (which may
carry signatures).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from stillmotion import errors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 8192
USER_AGENT = "stillmotion-fetch/1"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_SIZE = 64 * 1024

#: Cloud instance-metadata endpoints: refused even when private addresses are allowed.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPAT = ipaddress.ip_network("::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False  # allow non-public addresses (metadata ones stay refused)
    timeout: float = 30.0  # whole fetch, seconds: DNS, connects, redirects and body
    max_redirects: int = 5
    max_bytes: int = 20 * 1024 * 1024
    #: the setting that allows private addresses, named when one is refused
    allow_setting: str = "STILLMOTION_ALLOW_PRIVATE_URLS"


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    content_type: str | None  # the media type, lower-cased, without parameters
    final_url: str  # after redirects


# --------------------------------------------------------------------------- URL syntax


#: whitespace (Unicode too), control characters, DEL and backslashes
_BAD_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f\\]")


#: A plain ASCII http(s) URL whose host is a DNS name or a dotted IPv4 address and whose
#: authority has no user info: such URLs are checked without a full parse (the submit path's
#: common case). Anything else takes the full parse in :func:`_parse_url`.
_PLAIN_URL = re.compile(r"(?i)https?://([a-z0-9.-]+)(?::([0-9]{1,5}))?(?:[/?#][!-\[\]-~]*)?")


def check_url_syntax(url: str, what: str) -> None:
    """Refuse what is not a plain, absolute ``http(s)`` URL. No network.

    Raises :class:`errors.InvalidURL` (an :class:`errors.InvalidParameter`).
    """
    plain = isinstance(url, str) and len(url) <= MAX_URL_LENGTH and _PLAIN_URL.fullmatch(url)
    if not plain:
        _parse_url(url, what)
        return
    port = plain.group(2)
    _check_host_syntax(plain.group(1).lower(), int(port) if port else None, what)


def _parse_url(url: str, what: str) -> httpx.URL:
    if not isinstance(url, str) or not url:
        raise errors.InvalidURL(f"{what} must be a non-empty URL string")
    if len(url) > MAX_URL_LENGTH:
        raise errors.InvalidURL(f"{what} is longer than {MAX_URL_LENGTH} characters")
    if _BAD_URL_CHARS.search(url):
        raise errors.InvalidURL(f"{what} contains whitespace, control characters or '\\'")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower() if sep else url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        known = 0 < len(scheme) < 16 and scheme.isalnum()
        raise errors.InvalidURL(
            f"{what} must be an http or https URL" + (f", not {scheme}:" if known else "")
        )
    if not sep:
        raise errors.InvalidURL(f"{what} must be an absolute URL ({scheme}://host/...)")
    if "@" in re.split(r"[/?#]", rest, maxsplit=1)[0]:
        raise errors.InvalidURL(f"{what} must not carry a user name or password")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise errors.InvalidURL(f"{what} is not a valid URL") from None
    _check_host_syntax(parsed.raw_host.decode("ascii", "replace").lower(), parsed.port, what)
    return parsed


def _check_host_syntax(host: str, port: int | None, what: str) -> None:
    if not host:
        raise errors.InvalidURL(f"{what} has no host")
    if "%" in host:
        raise errors.InvalidURL(f"{what} has an invalid host name")
    if port is not None and not 0 < port < 65536:
        raise errors.InvalidURL(f"{what} has an invalid port")
    if (":" in host or host.replace(".", "").isdigit()) and _ip_literal(host) is not None:
        return
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise errors.InvalidURL(f"{what} has an invalid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # "2130706433", "0x7f.1", "127.1": resolvers read these as IPv4 addresses.
        raise errors.InvalidURL(f"{what} has an ambiguous numeric host; write a dotted IPv4")


def _ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, ignoring any IPv6 zone (``%eth0``); ``None`` for names."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


# --------------------------------------------------------------------------- SSRF guard


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, -compatible, NAT64 or 6to4 IPv6 address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPAT and int(ip) > 0xFFFF):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public(ip: IPAddress) -> bool:
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip in _CGNAT
        or not ip.is_global
    )


PRIVATE_REFUSAL = "a private, loopback, link-local or otherwise non-public address"


def address_refusal(address: str, policy: FetchPolicy) -> str | None:
    """Why ``address`` may not be fetched from under ``policy``, or ``None`` when it may."""
    ip = _ip_literal(address)
    if ip is None:
        return "not an IP address"
    candidates = [ip] + [v4 for v4 in (_embedded_ipv4(ip),) if v4 is not None]
    if any(c in METADATA_ADDRESSES for c in candidates):
        return "a cloud metadata address"
    if policy.allow_private or all(_is_public(c) for c in candidates):
        return None
    return PRIVATE_REFUSAL


async def _resolve(host: str, port: int) -> list[str]:
    """The host's addresses, in resolver order, without duplicates."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    return list(dict.fromkeys(addresses))


async def check_host(host: str, port: int, policy: FetchPolicy) -> list[str]:
    """Resolve ``host`` and return its addresses, refusing the host if ANY address is refused.

    Raises :class:`errors.InvalidURL` for a refused address and
    :class:`errors.InputDownloadFailed` when the name does not resolve.
    """
    return await _check_host(host, port, policy, subject="")


async def _check_host(host: str, port: int, policy: FetchPolicy, *, subject: str) -> list[str]:
    prefix = f"{subject}: " if subject else ""
    literal = _ip_literal(host.removeprefix("[").removesuffix("]"))
    if literal is not None:
        addresses = [str(literal)]
    elif _is_localhost_name(host) and not policy.allow_private:
        # RFC 6761: loopback by definition; refused without asking a resolver, which may
        # not know "localhost." or "x.localhost" (a fetch error instead of this refusal).
        raise errors.InvalidURL(f"{prefix}host {host} {_refusal_text(PRIVATE_REFUSAL, policy)}")
    else:
        try:
            addresses = await _resolve(host, port)
        except (OSError, UnicodeError):
            raise errors.InputDownloadFailed(f"{prefix}could not resolve host {host}") from None
        if not addresses:
            raise errors.InputDownloadFailed(f"{prefix}host {host} has no addresses")
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            raise errors.InvalidURL(f"{prefix}host {host} {_refusal_text(reason, policy)}")
    return addresses


def _is_localhost_name(host: str) -> bool:
    name = host.lower().removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


def _refusal_text(reason: str, policy: FetchPolicy) -> str:
    """What follows the host name in a refusal; a private address names the setting that
    allows it (the address itself is not told: a name's resolution stays server-side)."""
    text = f"resolves to {reason}; it may not be fetched"
    if reason == PRIVATE_REFUSAL:
        text += f" (a server started with {policy.allow_setting}=1 may, for local development)"
    return text


# --------------------------------------------------------------------------- fetching


async def fetch_to_file(
    url: str,
    dest: Path,
    policy: FetchPolicy,
    *,
    what: str = "img_url",
    client: httpx.AsyncClient | None = None,
) -> Fetched:
    """Download ``url`` to ``dest`` under ``policy``; see the module docstring.

    ``dest`` is written only on success (through ``dest.part``). A caller-supplied ``client``
    should be made with ``follow_redirects=False`` and ``trust_env=False`` (no env proxies).
    """
    parsed = _parse_url(url, what)
    own_client = client is None
    http = client or httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=httpx.Timeout(policy.timeout)
    )
    part = dest.with_name(dest.name + ".part")
    try:
        async with asyncio.timeout(policy.timeout):
            fetched = await _follow(http, parsed, part, policy, what)
        part.replace(dest)
        return Fetched(dest, fetched.size, fetched.content_type, fetched.final_url)
    except TimeoutError:
        raise errors.InputDownloadFailed(
            f"downloading {what} timed out after {policy.timeout:g} s"
        ) from None
    finally:
        part.unlink(missing_ok=True)
        if own_client:
            await http.aclose()


async def _follow(
    client: httpx.AsyncClient, url: httpx.URL, part: Path, policy: FetchPolicy, what: str
) -> Fetched:
    subject = what
    for hop in range(policy.max_redirects + 1):
        if hop:
            subject = f"{what} (after a redirect)"
            _parse_url(str(url), subject)  # a redirect target gets the submit-time checks too
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await _check_host(host, port, policy, subject=subject)
        result = await _get_pinned(client, url, addresses, part, policy, what)
        if isinstance(result, Fetched):
            return result
        url = result
    raise errors.InputDownloadFailed(f"{what} redirected more than {policy.max_redirects} times")


async def _get_pinned(
    client: httpx.AsyncClient,
    url: httpx.URL,
    addresses: list[str],
    part: Path,
    policy: FetchPolicy,
    what: str,
) -> Fetched | httpx.URL:
    """GET ``url`` from the first of ``addresses`` that accepts a connection."""
    host = url.raw_host.decode("ascii")
    for i, address in enumerate(addresses):
        try:
            return await _get_once(client, url, address, part, policy, what)
        except httpx.ConnectError as exc:
            if i + 1 < len(addresses):
                continue
            raise errors.InputDownloadFailed(
                f"could not connect to {host} for {what}: {_describe(exc)}"
            ) from None
        except _HTTPX_ERRORS as exc:
            raise errors.InputDownloadFailed(
                f"downloading {what} from {host} failed: {_describe(exc)}"
            ) from None
    raise errors.InputDownloadFailed(f"host {host} has no addresses")  # pragma: no cover


def _pinned_request(client: httpx.AsyncClient, url: httpx.URL, address: str) -> httpx.Request:
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"}
    return pinned_request(client, "GET", url, address, headers=headers)


def pinned_request(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    address: str,
    *,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request for ``url`` sent to ``address`` (one :func:`check_host` returned), keeping
    ``Host`` and TLS SNI/verification on the URL's name (webhook deliveries use it too)."""
    headers = {"Host": url.netloc.decode("ascii"), **headers}
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    target = url.copy_with(host=address, fragment=None)
    return client.build_request(
        method, target, headers=headers, content=content, extensions=extensions
    )


async def _get_once(
    client: httpx.AsyncClient,
    url: httpx.URL,
    address: str,
    part: Path,
    policy: FetchPolicy,
    what: str,
) -> Fetched | httpx.URL:
    request = _pinned_request(client, url, address)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        if response.status_code in REDIRECT_STATUSES:
            return _redirect_target(url, response, what)
        if not response.is_success:
            raise errors.InputDownloadFailed(
                f"downloading {what} from {url.host} failed: HTTP {response.status_code}"
            )
        size = await _save_body(response, part, policy.max_bytes, what)
    finally:
        await response.aclose()
    return Fetched(part, size, _media_type(response), str(url.copy_with(fragment=None)))


def _redirect_target(url: httpx.URL, response: httpx.Response, what: str) -> httpx.URL:
    location = response.headers.get("Location")
    if not location:
        raise errors.InputDownloadFailed(
            f"{what} host {url.host} answered HTTP {response.status_code} without a Location"
        )
    try:
        return url.join(location)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise errors.InvalidURL(f"{what} redirects to an invalid URL") from None


async def _save_body(response: httpx.Response, part: Path, max_bytes: int, what: str) -> int:
    too_large = errors.TooLarge(f"{what} is larger than {max_bytes / (1024 * 1024):g} MB")
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > max_bytes:
        raise too_large
    size = 0
    with part.open("wb") as out:
        async for chunk in response.aiter_bytes(CHUNK_SIZE):
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            out.write(chunk)
    return size


def _media_type(response: httpx.Response) -> str | None:
    value = response.headers.get("Content-Type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _describe(exc: Exception) -> str:
    """A short reason for an httpx failure, without the URL."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server broke the HTTP protocol"
    if isinstance(exc, httpx.TransportError) and str(exc):
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return type(exc).__name__
