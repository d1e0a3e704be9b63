"""The address a request came from, trusting forwarded headers only from configured proxies.

TRUSTED_PROXIES (setting): comma-separated addresses or networks (e.g. "127.0.0.1, 10.0.0.0/8")
of the reverse proxies in front of the API and the dashboard. Default: none, so X-Forwarded-For
and X-Real-IP are ignored and the socket's peer is the client. A header from anyone else is
ignored: otherwise any client could invent a new address for every attempt and never be throttled.

    trusted_proxies() -> list of networks
    client_address(peer, headers) -> str | None       for any server (headers: name -> value)
    dashboard_client_address(ip_address, headers)    Streamlit's st.context.ip_address and
                                                      st.context.headers (ip_address is None for
                                                      a loopback peer: a same-host proxy)
The API passes the same setting to uvicorn (forwarded_allow_ips, see core.api.server).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from core import config

SETTING = "TRUSTED_PROXIES"
LOOPBACK = "127.0.0.1"


def trusted_proxies(raw: str | None = None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    raw = config.setting(SETTING, "") if raw is None else raw
    networks = []
    for part in (raw or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{SETTING}: {part!r} is not an IP address or network") from None
    return networks


def _is_trusted(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _valid(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address.strip().strip("[]")))
    except ValueError:
        return None


def client_address(peer: str | None, headers: Mapping[str, str], networks=None) -> str | None:
    """The peer, or when the peer is a trusted proxy the nearest untrusted address it forwarded
    (X-Forwarded-For read from the right, then X-Real-IP)."""
    networks = trusted_proxies() if networks is None else networks
    if peer is None or not _is_trusted(peer, networks):
        return peer
    lower = {k.lower(): v for k, v in headers.items()}
    hops = [h.strip() for h in lower.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return _valid(hop) or peer
    if hops:
        return _valid(hops[0]) or peer
    real = _valid(lower.get("x-real-ip", ""))
    return real or peer


def dashboard_client_address(ip_address: str | None, headers: Mapping[str, str] | None) -> str | None:
    """The sign-in's address in the dashboard: Streamlit reports None for a loopback peer."""
    peer = ip_address if isinstance(ip_address, str) and ip_address else LOOPBACK
    return client_address(peer, dict(headers or {}))


def uvicorn_proxy_options() -> dict:
    """uvicorn's proxy_headers and forwarded_allow_ips from TRUSTED_PROXIES (off when empty)."""
    networks = trusted_proxies()
    if not networks:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": [str(n) for n in networks]}
