"""The benchmark's smoke run: every figure's code path runs against the real stack and the table prints.

No timing is asserted here (the machine is shared and noisy); the numbers are for people to read."""
import os
import subprocess
import sys

import pytest

from harness.stack import ROOT


def test_benchmark_smoke_run_prints_the_table():
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1].strip() == "figure"
    figures = {line.split("|")[1].strip().split(".")[0] for line in table[1:]}
    assert figures == {"1", "2", "3", "4", "5", "6", "8", "9", "10"}, done.stdout
    assert "(failed)" not in done.stdout, done.stdout
    # Figure 2 checks every invariant after its load: the run must say PASS, not just print a row.
    assert "invariants FAIL" not in done.stdout and "invariants PASS" in done.stdout, done.stdout


def test_topology_figure_smoke_run_sets_quorum_beside_its_classic_baseline():
    # The single node's two queue types only: the cluster topologies need their scripts' servers.
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "7", "--topologies", "quorum"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:3] for line in done.stdout.splitlines() if line.startswith("| 7. single")]
    assert [figure.split(":")[0].strip() for figure, _ in rows] == \
        ["7. single node, classic queues"] * 3 + ["7. single node, quorum queues"] * 3, done.stdout
    assert "(failed)" not in done.stdout, done.stdout


def test_floors_smoke_run_measures_every_building_block():
    done = subprocess.run([sys.executable, "-m", "bench.floors", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" ")[0] for row in rows] == ["Tornado", "aiopg", "aiopg"] + \
        ["aio-pika", "aiormq", "aio-pika"] * 2, done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="tcpdump captures on loopback as root")
def test_hops_smoke_run_names_each_step_of_an_order():
    done = subprocess.run([sys.executable, "-m", "bench.hops", "--smoke", "--orders", "30"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line.split("|")[2].strip() for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    assert steps[0] == "client→gateway", done.stdout
    for step in ("gateway→order", "order→postgres", "order→rabbitmq", "rabbitmq→payment", "payment→postgres",
                 "payment→rabbitmq", "rabbitmq→order"):
        assert step in steps, done.stdout
