"""Where an order's milliseconds go, hop by hop: tcpdump on loopback while orders are placed one at a time, each
packet that carries data named by who sent it to whom (the client, the gateway, the Order and Payments services,
PostgreSQL, RabbitMQ; `ss -tnp` tells whose each connection is), then the median time of each step of the most
common sequence.

    .venv/bin/python -m bench.hops --orders 300 --gap 0.05      # ~1 min; as root (tcpdump), apt-get installs it

An order's window runs from its `POST /orders` reaching the gateway to the next one; orders are spaced `gap` apart
so that they never overlap. Steps of background work (a relay's poll, a health check) fall into some windows and
change their sequence: only windows with the most common sequence are read. Loopback delivers a packet within the
sending system call, so a step's time is the sender's work since the step before plus its wake-up."""
import argparse
import re
import statistics
import struct
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.progress import say
from bench.scenarios import SMOKE, Plan, bench_stack
from bench.steady import steady_orders
from bench.tools import ensure_installed, find


def packets(pcap):
    """(time, source port, destination port, payload bytes) of each TCP packet with a payload, from a pcap of
    loopback (Linux's lo: link type 1, a 14-byte Ethernet header; IPv4)."""
    data = Path(pcap).read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    nanos = magic == 0xA1B23C4D
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _length = struct.unpack("<IIII", data[offset:offset + 16])
        frame = data[offset + 16:offset + 16 + captured]
        offset += 16 + captured
        ip = frame[14:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ip_header, total = (ip[0] & 0x0F) * 4, struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ip_header:]
        source, destination = struct.unpack("!HH", tcp[:4])
        payload = total - ip_header - (tcp[12] >> 4) * 4
        if payload > 0:
            yield seconds + fraction / (1e9 if nanos else 1e6), source, destination, payload


def owners(stack):
    """{local port: who} for every TCP connection of the stack's processes, and the servers' listening ports."""
    names = {stack[name].popen.pid: name for name in ("gateway", "order", "payment")}
    ports = {5432: "postgres", 5672: "rabbitmq"}
    listing = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        local = fields[3].rsplit(":", 1)[1]
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in names:
                ports.setdefault(int(local), names[pid])
    return ports


def timeline(events):
    """[(offset ms, "who→whom")] per order window (from a request reaching the gateway to the next one),
    consecutive packets of one direction merged."""
    windows, current = [], None
    for at, step in events:
        if step == "client→gateway" and (current is None or current[-1][1] != step):
            current = [(at, step)]
            windows.append(current)
        elif current is not None and step != current[-1][1]:
            current.append((at, step))
    return [[((at - window[0][0]) * 1000, step) for at, step in window] for window in windows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between two orders")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    ensure_installed()
    plan = SMOKE if args.smoke else Plan()
    with tempfile.TemporaryDirectory() as scratch, bench_stack(plan, FAST_PATH="1") as (stack, _):
        steady_orders(stack.url, 20, 1, plan.users)  # connections and caches warm
        ports = owners(stack)
        pcap = Path(scratch) / "lo.pcap"
        capture = subprocess.Popen([find("tcpdump"), "-i", "lo", "-w", str(pcap), "-U", "-s", "128", "-nn",
                                    "--time-stamp-precision=nano", "tcp"], stderr=subprocess.DEVNULL)
        time.sleep(1)
        steady_orders(stack.url, 1 / args.gap, args.orders * args.gap, plan.users)
        time.sleep(1)
        capture.terminate()
        capture.wait()
        ports.update({stack.gateway_port: "gateway"})
        events = []
        for at, source, destination, _size in packets(pcap):
            sender, receiver = ports.get(source, "client"), ports.get(destination, "client")
            if source == stack.gateway_port or destination == stack.gateway_port:
                sender, receiver = ("client", "gateway") if destination == stack.gateway_port else ("gateway", "client")
            events.append((at, f"{sender}→{receiver}"))
    report(timeline(events))


def report(windows):
    signatures = Counter(tuple(step for _, step in window) for window in windows)
    (signature, count), = signatures.most_common(1)
    chosen = [window for window in windows if tuple(step for _, step in window) == signature]
    say(f"{len(windows)} orders, {count} with the most common sequence of {len(signature)} steps")
    print("| # | step | at (median ms) | since the step before |")
    print("| --- | --- | --- | --- |")
    for index, step in enumerate(signature):
        at = statistics.median(window[index][0] for window in chosen)
        gap = statistics.median(window[index][0] - (window[index - 1][0] if index else 0) for window in chosen)
        print(f"| {index + 1} | {step} | {at:.2f} | {gap:.2f} |")


if __name__ == "__main__":
    main()
