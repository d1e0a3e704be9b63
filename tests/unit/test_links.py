"""Photo links: only public http(s) hosts (or the allow-listed photo host) are ever contacted.

Every test runs a real HTTP server on loopback and checks which requests reached it: a refused
link must not reach it at all.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.workflows import links
from core.workflows.links import REFUSED_MESSAGE, LinkFailed, LinkRefused, fetch_photo_link, is_public_address

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 100


class _Server:
    def __init__(self):
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Host")))
                status, headers, body = outer.routes.get(self.path, (404, {}, b"secret internal text"))
                self.send_response(status, "Secret Reason Phrase")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_port
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    s.routes["/photo.jpg"] = (200, {"Content-Type": "image/jpeg"}, JPEG)
    yield s
    s.close()


@pytest.fixture
def second_server():
    s = _Server()
    s.routes["/photo.jpg"] = (200, {"Content-Type": "image/jpeg"}, JPEG)
    yield s
    s.close()


def allow(monkeypatch, value: str | None):
    if value is None:
        monkeypatch.delenv(links.ALLOW_SETTING, raising=False)
    else:
        monkeypatch.setenv(links.ALLOW_SETTING, value)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "0x7f000001",
        "2130706433",
        "127.1",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "127.000.000.001",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::1]",
        "0.0.0.0",
        "0",
    ],
)
def test_every_spelling_of_loopback_is_refused_without_contact(server, monkeypatch, host):
    allow(monkeypatch, None)
    with pytest.raises(LinkRefused) as info:
        fetch_photo_link(f"http://{host}:{server.port}/photo.jpg")
    assert str(info.value) == REFUSED_MESSAGE
    assert server.requests == []


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # AWS/GCP/Azure metadata
        "100.100.100.200",  # Alibaba metadata
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle metadata
        "100.64.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "0.0.0.0",
        "198.18.0.1",
        "192.0.2.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "2001::7f00:1",  # Teredo, refused whole
        "2001:db8::1",  # documentation
    ],
)
def test_private_and_metadata_addresses_are_not_public(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e"])
def test_public_addresses_are_public(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://127.0.0.1:3306/",
        "dict://127.0.0.1:6379/info",
        "http://user:pw@example.com/a.jpg",
        "http:///a.jpg",
        "http://exa mple.com/a.jpg",
        "http://[fe80::1%25lo]/a.jpg",
        "javascript:alert(1)",
    ],
)
def test_other_schemes_and_malformed_links_are_refused(url, monkeypatch):
    allow(monkeypatch, None)
    with pytest.raises(LinkRefused) as info:
        fetch_photo_link(url)
    assert str(info.value) == REFUSED_MESSAGE


def test_allow_listed_host_and_port_is_fetched(server, monkeypatch):
    allow(monkeypatch, f"photos.customer.example, 127.0.0.1:{server.port}")
    got = fetch_photo_link(f"{server.base}/photo.jpg")
    assert got.data == JPEG and got.content_type == "image/jpeg"
    assert server.requests == [("/photo.jpg", f"127.0.0.1:{server.port}")]


def test_allow_list_names_one_port_not_the_whole_machine(server, second_server, monkeypatch):
    allow(monkeypatch, f"127.0.0.1:{server.port}")
    with pytest.raises(LinkRefused):
        fetch_photo_link(f"{second_server.base}/photo.jpg")
    with pytest.raises(LinkRefused):  # the same machine spelt otherwise is not the allowed host
        fetch_photo_link(f"http://0x7f000001:{server.port}/photo.jpg")
    assert second_server.requests == [] and server.requests == []


def test_allow_listed_network_matches_the_resolved_address(server, monkeypatch):
    allow(monkeypatch, "127.0.0.0/8")
    assert fetch_photo_link(f"http://localhost:{server.port}/photo.jpg").data == JPEG


def test_host_name_connects_to_the_checked_address_with_its_own_host_header(server, monkeypatch):
    """The name is resolved once; the connection goes to that address (no second lookup)."""
    allow(monkeypatch, "photos.customer.example")
    calls = []

    def fake_getaddrinfo(host, port, *args, **kwargs):
        calls.append(host)
        assert host == "photos.customer.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(links.socket, "getaddrinfo", fake_getaddrinfo)
    got = fetch_photo_link(f"http://photos.customer.example:{server.port}/photo.jpg")
    assert got.data == JPEG
    assert calls == ["photos.customer.example"]
    assert server.requests == [("/photo.jpg", f"photos.customer.example:{server.port}")]


def test_dns_rebinding_cannot_switch_to_loopback_after_the_check(server, monkeypatch):
    """First answer public, later answers loopback: the connection still goes to the first one."""
    allow(monkeypatch, None)
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])

    def rebinding_getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    connected = []

    def no_internet(address, port):
        connected.append((address, port))
        raise ConnectionRefusedError("no traffic leaves this machine in tests")

    monkeypatch.setattr(links.socket, "getaddrinfo", rebinding_getaddrinfo)
    monkeypatch.setattr(links, "_open_socket", no_internet)
    with pytest.raises(LinkFailed):
        fetch_photo_link(f"http://rebind.example:{server.port}/photo.jpg")
    assert connected == [("93.184.216.34", server.port)]
    assert server.requests == []


def test_a_name_with_any_private_address_is_refused(monkeypatch):
    allow(monkeypatch, None)

    def mixed(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    monkeypatch.setattr(links.socket, "getaddrinfo", mixed)
    with pytest.raises(LinkRefused):
        fetch_photo_link("http://mixed.example/photo.jpg")


def test_redirect_to_a_refused_address_is_checked_again(server, second_server, monkeypatch):
    allow(monkeypatch, f"127.0.0.1:{server.port}")
    server.routes["/go"] = (302, {"Location": f"{second_server.base}/photo.jpg"}, b"")
    server.routes["/api"] = (301, {"Location": f"http://localhost:{server.port}/openapi.json"}, b"")
    server.routes["/file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    for path in ("/go", "/api", "/file"):
        with pytest.raises(LinkRefused) as info:
            fetch_photo_link(f"{server.base}{path}")
        assert str(info.value) == REFUSED_MESSAGE
    assert second_server.requests == []
    assert [p for p, _ in server.requests] == ["/go", "/api", "/file"]


def test_redirects_are_followed_up_to_the_limit(server, monkeypatch):
    allow(monkeypatch, f"127.0.0.1:{server.port}")
    server.routes["/r1"] = (302, {"Location": "/r2"}, b"")
    server.routes["/r2"] = (307, {"Location": "/photo.jpg"}, b"")
    assert fetch_photo_link(f"{server.base}/r1").data == JPEG
    server.requests.clear()
    server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(LinkRefused):
        fetch_photo_link(f"{server.base}/loop")
    assert len(server.requests) == links.MAX_REDIRECTS + 1


def test_errors_never_echo_the_remote_side(server, monkeypatch):
    allow(monkeypatch, f"127.0.0.1:{server.port}")
    with pytest.raises(LinkFailed) as info:
        fetch_photo_link(f"{server.base}/missing")
    assert str(info.value) == "the link answered HTTP 404"
    assert "Secret" not in str(info.value) and "secret" not in str(info.value)


def test_a_non_http_banner_is_not_echoed(monkeypatch):
    """A database-like port that writes a banner: the message is the generic one."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def banner():
        conn, _ = listener.accept()
        conn.sendall(b"J\x00\x00\x00\n5.5.5-10.11.6-MariaDB-secret-banner\x00" + b"\x00" * 40)
        conn.close()

    thread = threading.Thread(target=banner, daemon=True)
    thread.start()
    allow(monkeypatch, f"127.0.0.1:{port}")
    try:
        with pytest.raises(LinkFailed) as info:
            fetch_photo_link(f"http://127.0.0.1:{port}/")
        assert str(info.value) == "the link cannot be reached"
    finally:
        thread.join(5)
        listener.close()


def test_size_limit_from_header_and_from_bytes(server, monkeypatch):
    allow(monkeypatch, f"127.0.0.1:{server.port}")
    server.routes["/big.jpg"] = (200, {"Content-Type": "image/jpeg"}, b"x" * 5000)
    with pytest.raises(LinkFailed, match="larger than"):
        fetch_photo_link(f"{server.base}/big.jpg", max_bytes=1000)


def test_a_silent_server_times_out(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    allow(monkeypatch, f"127.0.0.1:{port}")
    monkeypatch.setattr(links, "READ_TIMEOUT_S", 0.3)
    try:
        with pytest.raises(LinkFailed, match="in time"):
            fetch_photo_link(f"http://127.0.0.1:{port}/photo.jpg")
    finally:
        listener.close()
