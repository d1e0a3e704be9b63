"""The client's address: forwarded headers believed only from TRUSTED_PROXIES (default nobody)."""

from __future__ import annotations

import pytest

from core.storage.client_address import (
    client_address,
    dashboard_client_address,
    trusted_proxies,
    uvicorn_proxy_options,
)

FORWARDED = {"X-Forwarded-For": "198.51.100.7"}


def test_by_default_no_proxy_is_trusted_and_headers_are_ignored(monkeypatch):
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    assert client_address("127.0.0.1", FORWARDED) == "127.0.0.1"
    assert client_address("203.0.113.5", FORWARDED) == "203.0.113.5"
    assert uvicorn_proxy_options() == {"proxy_headers": False}
    # Streamlit reports no address for a loopback peer: counted as loopback, not as the header.
    assert dashboard_client_address(None, FORWARDED) == "127.0.0.1"


def test_a_trusted_proxy_forwards_the_nearest_untrusted_address(monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    assert client_address("127.0.0.1", FORWARDED) == "198.51.100.7"
    # A client's own invented entries come first; the proxies append what they saw.
    chain = {"X-Forwarded-For": "1.2.3.4, 198.51.100.7, 10.0.0.3"}
    assert client_address("127.0.0.1", chain) == "198.51.100.7"
    assert client_address("127.0.0.1", {"X-Real-IP": "198.51.100.9"}) == "198.51.100.9"
    assert client_address("127.0.0.1", {"X-Forwarded-For": "not an address"}) == "127.0.0.1"
    assert client_address("203.0.113.5", FORWARDED) == "203.0.113.5"  # not a proxy of ours
    assert dashboard_client_address(None, FORWARDED) == "198.51.100.7"  # same-host proxy
    assert dashboard_client_address("203.0.113.5", FORWARDED) == "203.0.113.5"
    assert uvicorn_proxy_options() == {
        "proxy_headers": True,
        "forwarded_allow_ips": ["127.0.0.1/32", "10.0.0.0/8"],
    }


def test_a_wrong_setting_is_named():
    with pytest.raises(ValueError, match="TRUSTED_PROXIES: 'example.com'"):
        trusted_proxies("example.com")
