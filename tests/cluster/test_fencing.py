"""Fencing: of two servers that both accept writes, as after a failover whose old primary has not demoted itself
yet, the services take the one on the higher timeline, whatever the order of the hosts in the DSN.

The two are real PostgreSQL servers of this test's own (ports the kernel gives, a temporary directory): one made
by `initdb`, and a copy of it by `pg_basebackup` promoted to a timeline of its own, the other left writing."""
import asyncio
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from common.db.pg_hosts import Hosts, find_primary, writing_timeline
from harness.stack import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(*command):
    # The server refuses to run as root.
    done = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, command)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{command[0]}: {done.stdout[-1500:]} {done.stderr[-1500:]}"


def start(data, port):
    as_postgres(BIN / "pg_ctl", "start", "-w", "-D", data, "-l", data / "server.log",
                "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off")


def dsn(port):
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.fixture(scope="module")
def two_primaries():
    """(old, new): ports of the server left on timeline 1 and of its copy promoted to timeline 2."""
    if not (BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15's server binaries are not installed")
    base = Path(tempfile.mkdtemp(prefix="shop-fencing-", dir="/var/tmp"))  # pytest's own are closed to postgres
    shutil.chown(base, "postgres")
    old_data, new_data = base / "old", base / "new"
    old, new = free_port(), free_port()
    started = []
    try:
        as_postgres(BIN / "initdb", "-D", old_data, "-A", "trust", "-U", "postgres")
        start(old_data, old)
        started.append(old_data)
        as_postgres(BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", old, "-U", "postgres", "-D", new_data, "-R")
        start(new_data, new)
        started.append(new_data)
        as_postgres(BIN / "pg_ctl", "promote", "-w", "-D", new_data)
        yield old, new
    finally:
        for data in started:
            subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "stop", "-m", "immediate", "-D",
                            str(data)], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_each_server_says_the_timeline_it_writes_on(two_primaries):
    old, new = two_primaries
    assert asyncio.run(writing_timeline(dsn(old))) == 1
    assert asyncio.run(writing_timeline(dsn(new))) == 2


@pytest.mark.parametrize("order", ["old first", "new first"])
def test_of_two_writable_servers_the_higher_timeline_is_chosen(two_primaries, order, caplog):
    old, new = two_primaries
    ports = [old, new] if order == "old first" else [new, old]
    with caplog.at_level(logging.WARNING, "common.db.pg_hosts"):
        assert asyncio.run(find_primary([dsn(port) for port in ports])) == dsn(new)
    assert f"127.0.0.1:{old} on timeline 1" in caplog.text
    assert f"using 127.0.0.1:{new}" in caplog.text


def test_a_multi_host_dsn_leads_to_the_higher_timeline(two_primaries):
    old, new = two_primaries
    hosts = Hosts(f"postgresql://postgres@127.0.0.1:{old},127.0.0.1:{new}/postgres")
    assert asyncio.run(hosts.primary()) == hosts.candidates[1]
