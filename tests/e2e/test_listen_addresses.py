"""Natively, nothing listens on every interface: the three processes bind their public and admin ports to
loopback (`.env`'s LISTEN_ADDRESS, GATEWAY_LISTEN_ADDRESS, ADMIN_LISTEN_ADDRESS), and the addresses are the
operator's to choose."""
import ipaddress
import os
import socket
from pathlib import Path

import pytest

from harness.stack import COMMANDS, Process, Stack, free_port

LISTEN = "0A"  # the state of a listening socket in /proc/net/tcp


def listening(pid):
    """{(address, port)} of the TCP sockets process `pid` listens on, IPv4 and IPv6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as rows:
            for row in (line.split() for line in list(rows)[1:]):
                if row[3] == LISTEN and row[9] in inodes:
                    found.add(decode(row[1], family))
    return found


def decode(hex_address, family):
    """('127.0.0.1', 8080) of /proc/net/tcp's '0100007F:1F90' (each 32-bit word in host byte order)."""
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(socket.inet_ntop(family, words))), int(port, 16)


@pytest.fixture(scope="module")
def stack():
    with Stack(prefix="shop_listen") as running:
        yield running


def test_every_process_listens_on_loopback_only_by_default(stack):
    for name, process in stack.processes.items():
        bound = listening(process.popen.pid)
        assert len(bound) == 2, (name, bound)  # its public port and its admin port
        assert {address for address, _ in bound} == {"127.0.0.1"}, (name, bound)


def test_the_listening_addresses_are_settings(tmp_path):
    port, admin = free_port(), free_port()
    env = {**os.environ, "AUTH_MODE": "off", "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_PORT": str(admin),
           "GATEWAY_LISTEN_ADDRESS": "127.0.0.4", "ADMIN_LISTEN_ADDRESS": "127.0.0.3"}
    gateway = Process("gateway", COMMANDS["gateway"], env, tmp_path / "gateway.log",
                      f"http://127.0.0.4:{port}/health", f"http://127.0.0.3:{admin}")
    gateway.start()
    try:
        gateway.wait_healthy()
        assert listening(gateway.popen.pid) == {("127.0.0.4", port), ("127.0.0.3", admin)}
    finally:
        gateway.stop()
