"""gunicorn listens on loopback unless HOST says otherwise (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from harness import http

LISTEN = "0A"  # the TCP_LISTEN state in /proc/net/tcp*


def listening_addresses(port: int) -> set[str]:
    """Return the local addresses of the sockets listening on `port`, read from /proc/net."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != LISTEN or int(port_hex, 16) != port:
                continue
            # The kernel prints each 32-bit word of the address in host byte order.
            raw = bytes.fromhex(address)
            words = [raw[i : i + 4][::-1] for i in range(0, width, 4)]
            found.add(str(ipaddress.ip_address(b"".join(words))))
    return found


def test_gunicorn_listens_on_loopback_only_by_default(server_factory):
    srv = server_factory()  # the harness passes no HOST
    assert "HOST" not in srv.env
    assert listening_addresses(srv.port) == {"127.0.0.1"}, srv.log_tail()
    assert f"Listening at: http://127.0.0.1:{srv.port}" in srv.log_text()


def test_host_0_0_0_0_listens_on_every_ipv4_address(server_factory):
    srv = server_factory(env={"HOST": "0.0.0.0"})
    assert listening_addresses(srv.port) == {"0.0.0.0"}, srv.log_tail()
    assert http("GET", srv.url + "/health")[0] == 200


def test_an_ipv6_host_is_bracketed(server_factory):
    if not Path("/proc/net/tcp6").exists():
        pytest.skip("this machine has no IPv6")
    if Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() != "0":
        pytest.skip(":: does not accept IPv4 here, and the harness checks health on 127.0.0.1")
    srv = server_factory(env={"HOST": "::"})
    assert listening_addresses(srv.port) == {"::"}, srv.log_tail()
    assert f"Listening at: http://[::]:{srv.port}" in srv.log_text()


@pytest.mark.parametrize("host", ["", "  ", "bad host"])
def test_an_empty_or_malformed_host_stops_startup_naming_it(server_factory, host):
    srv = server_factory(env={"HOST": host}, wait=False)
    rc = srv.wait_exit(timeout=15)
    assert rc not in (None, 0), srv.log_tail()
    assert "HOST" in srv.log_text(), srv.log_tail()
