"""Fetching a photo from an http(s) link without letting the link reach the server's own network.

fetch_photo_link(url) -> FetchedLink    the body (at most max_bytes) and its Content-Type.
                                        Raises LinkRefused or LinkFailed (both LinkError).

A link from an imported table is untrusted input: without care it can make the server fetch its
own API (127.0.0.1), the database port, the cloud's metadata service (169.254.169.254), or any
host on the private network, and the difference between error messages maps those ports. So:

- only http and https, on the URL's own port (or 80/443);
- the host name is resolved first, and every address it resolves to must be public: loopback,
  private, link-local, shared (CGNAT), multicast, unspecified, reserved, documentation and the
  known cloud metadata addresses are refused, for IPv4 and IPv6 alike, including IPv4 hidden in
  IPv6 (::ffff:127.0.0.1, 6to4, NAT64; Teredo is refused whole). Spellings such as 0x7f000001, 2130706433, 127.1
  or 0177.0.0.1 resolve to 127.0.0.1 and are refused as such;
- the connection goes to the address that was checked, never to a second lookup (no DNS
  rebinding); HTTPS still verifies the certificate for the host name;
- every redirect is checked the same way, at most MAX_REDIRECTS of them;
- connect and read timeouts, a total deadline and a size cap;
- every refusal gives the same short message, and no text from the remote side (reason phrase,
  body, banner) ever reaches the message.

PHOTO_LINK_ALLOW (setting, comma separated) lets the customer's own photo host through even when
it is on a private address: host names (`photos.internal`), host:port (`127.0.0.1:8641`),
addresses or networks (`10.20.0.0/16`). A host name entry matches the URL's host; an address or
network entry matches the resolved address.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from core import config
from core.errors import FaceVerifyError

MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0  # per read
TOTAL_TIMEOUT_S = 30.0  # a server trickling bytes cannot hold an import row longer than this
DEFAULT_MAX_BYTES = 25 * 1024 * 1024  # core.verification.imaging's per-photo limit
ALLOW_SETTING = "PHOTO_LINK_ALLOW"
USER_AGENT = "faceverify-importer/1.0"

REFUSED_MESSAGE = "the link is not allowed (only http(s) links to public hosts or the configured photo host)"

# Not covered by ipaddress's is_global/is_private in Python 3.11, yet internal on some clouds.
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "168.63.129.16/32",  # Azure's wire server / DNS
        "192.0.0.0/24",  # IETF protocol assignments (Oracle Cloud metadata is 192.0.0.192)
        "100.64.0.0/10",  # shared address space (Alibaba metadata is 100.100.100.200)
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class LinkError(FaceVerifyError):
    """A photo link that was not fetched. The message never holds text from the remote side."""

    code = "link_error"


class LinkRefused(LinkError):
    """The link points somewhere we do not fetch from (scheme, address, too many redirects)."""

    code = "link_refused"

    def __init__(self, why: str = ""):
        super().__init__(REFUSED_MESSAGE)
        self.why = why  # for logs and tests only; never shown, so refusals all look alike


class LinkFailed(LinkError):
    """An allowed host did not deliver the photo (HTTP status, timeout, too large, connection)."""

    code = "link_failed"


@dataclass(frozen=True)
class FetchedLink:
    data: bytes
    content_type: str | None
    url: str  # the final URL after redirects


@dataclass(frozen=True)
class _AllowList:
    hosts: frozenset[str]  # "host" or "host:port", lower case
    networks: tuple

    @classmethod
    def parse(cls, text: str | None) -> _AllowList:
        hosts, networks = set(), []
        for raw in (text or "").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str, port: int) -> bool:
        host = host.lower()
        if ":" in host:  # IPv6 literal: host:port is written [addr]:port
            return host in self.hosts or f"[{host}]:{port}" in self.hosts
        return host in self.hosts or f"{host}:{port}" in self.hosts

    def address_allowed(self, address: ipaddress._BaseAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def allow_list() -> _AllowList:
    return _AllowList.parse(config.setting(ALLOW_SETTING))


def is_public_address(address: str | ipaddress._BaseAddress) -> bool:
    """True only for a globally routable unicast address (IPv4 hidden in IPv6 is checked too)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 6:
        if ip.teredo is not None:  # a tunnel relay: no photo host lives there
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_private:
        return False
    return not any(ip.version == n.version and ip in n for n in _EXTRA_BLOCKED)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0:  # ::a.b.c.d, the deprecated IPv4-compatible form (and :: and ::1)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _resolve(host: str, port: int, allowed: _AllowList) -> str:
    """The address to connect to; refuses unless every address the name has is acceptable."""
    if "%" in host:  # IPv6 zone ids name an interface of this machine
        raise LinkRefused("zone id")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise LinkFailed("the link's host name cannot be resolved") from exc
    addresses = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addresses.append(ipaddress.ip_address(sockaddr[0].split("%", 1)[0]))
    if not addresses:
        raise LinkFailed("the link's host name cannot be resolved")
    host_ok = allowed.host_allowed(host, port)
    for ip in addresses:
        if not (host_ok or allowed.address_allowed(ip) or is_public_address(ip)):
            raise LinkRefused(f"address {ip}")
    return str(addresses[0])


def _open_socket(address: str, port: int) -> socket.socket:
    """A TCP connection to a numeric address: no name lookup can happen here."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address we checked; Host header and everything else use the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = _open_socket(self._address, self.port)
        self.sock.settimeout(self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, address, timeout)
        self._context = context

    def connect(self):
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def fetch_photo_link(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed: _AllowList | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> FetchedLink:
    """GET an http(s) photo link with every check above. Raises LinkRefused or LinkFailed."""
    allowed = allow_list() if allowed is None else allowed
    context = ssl_context or ssl.create_default_context()
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    for _ in range(MAX_REDIRECTS + 1):
        response_or_next = _get_once(url, max_bytes, allowed, context, deadline)
        if isinstance(response_or_next, FetchedLink):
            return response_or_next
        url = response_or_next
    raise LinkRefused("too many redirects")


def _split(url: str) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or len(url) > 2048 or any(ord(c) < 33 for c in url):
        raise LinkRefused("malformed")
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise LinkRefused("malformed") from exc
    if scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise LinkRefused("scheme, host or credentials")
    port = port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, host, port, target


def _get_once(url: str, max_bytes: int, allowed: _AllowList, context, deadline: float):
    """The photo, or the next URL to follow."""
    scheme, host, port, target = _split(url)
    address = _resolve(host, port, allowed)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise LinkFailed(f"the link took longer than {TOTAL_TIMEOUT_S:.0f} s")
    timeout = min(READ_TIMEOUT_S, remaining)
    if scheme == "https":
        conn = _PinnedHTTPSConnection(host, port, address, timeout, context)
    else:
        conn = _PinnedHTTPConnection(host, port, address, timeout)
    try:
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            if not location:
                raise LinkFailed(f"the link answered HTTP {response.status} without a target")
            return urllib.parse.urljoin(url, location.strip())
        if response.status != 200:
            raise LinkFailed(f"the link answered HTTP {response.status}")
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_bytes:
            raise LinkFailed(f"the link's file is larger than {max_bytes / 1e6:.0f} MB")
        chunks, total = [], 0
        while chunk := response.read(256 * 1024):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise LinkFailed(f"the link's file is larger than {max_bytes / 1e6:.0f} MB")
            if time.monotonic() > deadline:
                raise LinkFailed(f"the link took longer than {TOTAL_TIMEOUT_S:.0f} s")
        return FetchedLink(b"".join(chunks), response.getheader("Content-Type"), url)
    except LinkError:
        raise
    except TimeoutError as exc:
        raise LinkFailed("the link did not answer in time") from exc
    except ssl.SSLError as exc:
        raise LinkFailed("the link's HTTPS certificate or connection is not valid") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Connection refused or reset, a non-HTTP answer (a database banner), a malformed header:
        # one message, so no answer tells what listens where.
        raise LinkFailed("the link cannot be reached") from exc
    finally:
        conn.close()
