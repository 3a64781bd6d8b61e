"""Before ./run.sh starts the services: are the configured PostgreSQL and RabbitMQ there?

Reads ORDER_DB_DSN, PAYMENT_DB_DSN and RABBITMQ_URL from the environment over .env, and speaks the first bytes
of each protocol to every host they name (a PostgreSQL SSLRequest, the AMQP 0-9-1 header), so that "something
listens" is not mistaken for "the server is there". Exit 0 when all answer.

When one on this machine does not, and installing is allowed (root, or --install; never with --no-install), on
Debian or Ubuntu it installs the distribution's packages and starts what the installation created, or creates
a new PostgreSQL cluster of its own on the configured port. It never starts, changes or reuses a server that
existed before (a stopped cluster stays stopped: the commands to start it are printed instead). Otherwise it
stops at once with the exact commands to run. Standard library only: it runs before the virtualenv exists."""
import argparse
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common.config import read_env_file  # noqa: E402
from common.servers import amqp_hosts, postgres_hosts, reason  # noqa: E402

# sysexits.h EX_UNAVAILABLE: a service the program needs is not available.
EXIT_UNAVAILABLE = 69
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
NOT_THE_SERVER = "something else listens there"


def answers(host, port, hello, valid, timeout=3.0):
    """None if a server of the expected kind answers at host:port, else why not (`connection refused`)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(hello)
            reply = sock.recv(1)
    except OSError as exc:
        return reason(exc)
    return None if reply and valid(reply) else NOT_THE_SERVER


def check_postgres(host, port):
    return answers(host, port, PG_SSL_REQUEST, lambda b: b in (b"S", b"N"))


def check_rabbitmq(host, port):
    # A broker answers the protocol header with a Connection.Start method frame (frame type 1).
    return answers(host, port, AMQP_HEADER, lambda b: b == b"\x01")


class Target:
    """One server the configuration names: kind, address, the variables that name it, and who answers."""

    def __init__(self, kind, host, port):
        self.kind, self.host, self.port = kind, host, port
        self.variables, self.databases, self.users = [], set(), set()

    @property
    def local(self):
        return self.host in LOCAL_HOSTS

    def check(self):
        return (check_postgres if self.kind == "PostgreSQL" else check_rabbitmq)(self.host, self.port)


def targets(env):
    found = {}

    def target(kind, host, port):
        return found.setdefault((kind, host, port), Target(kind, host, port))
    for variable in ("ORDER_DB_DSN", "PAYMENT_DB_DSN"):
        hosts, dbname = postgres_hosts(env[variable])
        for host, port in hosts:
            t = target("PostgreSQL", host, port)
            t.variables.append(variable)
            t.databases.add(dbname)
            if (user := credentials(env[variable])) is not None:
                t.users.add(user[:2])
    for host, port in amqp_hosts(env["RABBITMQ_URL"]):
        t = target("RabbitMQ", host, port)
        t.variables.append("RABBITMQ_URL")
        t.users.update(filter(None, (credentials(url) for url in env["RABBITMQ_URL"].split(",") if url.strip())))
    return list(found.values())


def credentials(url):
    """(user, password, vhost) of a URL; DSNs in key=value form are not parsed (None)."""
    if "://" not in url:
        return None
    parts = urlsplit(url.strip())
    return unquote(parts.username or ""), unquote(parts.password or ""), unquote(parts.path[1:] or "/")


# --- what to do about it ---------------------------------------------------------------------------------

def is_debian():
    try:
        release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    except OSError:
        return False
    ids = {release.get("ID", "").strip('"'), *release.get("ID_LIKE", "").strip('"').split()}
    return bool(ids & {"debian", "ubuntu"})


def sh(*command):
    print("run.sh: $", show(command, sudo=False), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def installed(binary):
    return subprocess.run(["sh", "-c", f"command -v {binary}"], capture_output=True).returncode == 0


def pg_version():
    versions = sorted((p.name for p in Path("/usr/lib/postgresql").glob("*") if p.name.isdigit()), key=int)
    return versions[-1] if versions else None


def pg_clusters():
    """{port: 'VERSION NAME'} of the machine's PostgreSQL clusters (Debian's pg_lsclusters)."""
    if not installed("pg_lsclusters"):
        return {}
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
    return {int(f[2]): f"{f[0]} {f[1]}" for f in (line.split() for line in out.splitlines()) if len(f) > 2}


def pg_ctl(cluster, action):
    version, name = cluster.split()
    return ["pg_ctlcluster", *(["--skip-systemctl-redirect"] if not Path("/run/systemd/system").exists() else []),
            version, name, action]


def postgres_plan(target):
    """(commands a person would run, whether this script may run them itself)."""
    clusters = pg_clusters()
    if target.port in clusters:
        # A cluster that existed before: its owner decides whether it runs.
        return [pg_ctl(clusters[target.port], "start")], False
    commands = []
    if not installed("pg_createcluster"):
        # Debian's package creates and starts its cluster `main` on 5432 (if no cluster has that port).
        commands.append(["apt-get", "install", "-y", "postgresql"])
    if installed("pg_createcluster") or target.port != 5432:
        commands.append(["pg_createcluster", "--start", "-p", str(target.port), pg_version() or "15", "shop"])
    # The new cluster lets local users in by peer authentication; the services log in with a password.
    for name, password in sorted(target.users):
        verb = "ALTER" if name == "postgres" else "CREATE"
        quoted = password.replace("'", "''")
        commands.append(["runuser", "-u", "postgres", "--", "psql", "-q", "-p", str(target.port), "-c",
                         f"{verb} ROLE {identifier(name)} LOGIN CREATEDB PASSWORD '{quoted}'"])
    return commands, True


def identifier(name):
    return name if name.isidentifier() and name.islower() else '"' + name.replace('"', '""') + '"'


def rabbitmq_plan(target):
    """(commands a person would run, whether this script may run them itself)."""
    if target.port != 5672:
        return [["#", f"run a RabbitMQ node on port {target.port} (scripts/private-brokers.sh shows how), "
                      "or point RABBITMQ_URL at yours"]], False
    if installed("rabbitmq-server"):
        # An installed broker is the machine's own: start it yourself if you want it.
        return [["service", "rabbitmq-server", "start"]], False
    commands = [["apt-get", "install", "-y", "rabbitmq-server"], ["service", "rabbitmq-server", "start"]]
    for name, password, vhost in sorted(target.users):
        if vhost != "/":
            commands.append(["rabbitmqctl", "add_vhost", vhost])
        if name != "guest":
            commands.append(["rabbitmqctl", "add_user", name, password])
        if name != "guest" or vhost != "/":
            commands.append(["rabbitmqctl", "set_permissions", "-p", vhost, name, ".*", ".*", ".*"])
    return commands, True


def show(command, sudo):
    """A command as a person would type it: double quotes around an argument with single quotes in it."""
    if command[0] == "#":
        return " ".join(command)
    words = [f'"{w}"' if "'" in w and not set(w) & set('"$`\\') else shlex.quote(w) for w in command]
    return ("sudo " if sudo else "") + " ".join(words)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install and start missing servers (via sudo)")
    parser.add_argument("--no-install", action="store_true", help="never install: only say what to run")
    args = parser.parse_args(argv)
    env = {**read_env_file(), **os.environ}
    missing = [(t, why) for t in targets(env) if (why := t.check()) is not None]
    if not missing:
        return 0
    for t, why in missing:
        print(f"run.sh: {t.kind} is not reachable at {t.host}:{t.port} ({', '.join(t.variables)}): {why}",
              file=sys.stderr)
    root = os.geteuid() == 0
    may_install = not args.no_install and (args.install or root) and is_debian()
    plans = [(t, why, *(postgres_plan(t) if t.kind == "PostgreSQL" else rabbitmq_plan(t))) for t, why in missing]
    automatic = [t.local and auto and why != NOT_THE_SERVER for t, why, _, auto in plans]
    if may_install and all(automatic):
        return install([commands for _, _, commands, _ in plans], [t for t, *_ in plans], root)
    print(f"\nStart {'them' if len(missing) > 1 else 'it'}, then run ./run.sh again:", file=sys.stderr)
    for (t, why, commands, _), auto in zip(plans, automatic):
        if not t.local:
            print(f"  # {t.host}:{t.port} is not this machine: start {t.kind} there, or change "
                  f"{', '.join(t.variables)}", file=sys.stderr)
        elif why == NOT_THE_SERVER:
            print(f"  # port {t.port} is taken by something that is not {t.kind}: change "
                  f"{', '.join(t.variables)}", file=sys.stderr)
        else:
            installed_already = not auto and commands[0][0] != "#"
            print(f"  # {t.kind} on port {t.port}" + (": it is installed, yours to start" if installed_already
                                                        else ""), file=sys.stderr)
            for command in commands:
                print("  " + show(command, sudo=not root), file=sys.stderr)
    if any(automatic) and is_debian() and not may_install:
        print("or let ./run.sh do that: ./run.sh --install" + ("" if root else " (it uses sudo)"), file=sys.stderr)
    print("or run everything in containers: docker compose up --build (Compose v1: docker-compose up --build)",
          file=sys.stderr)
    return EXIT_UNAVAILABLE


def install(plans, missing, root):
    """Run the plans' commands (sudo unless root); then every server must answer."""
    sudo = [] if root else ["sudo"]
    if any(c[:2] == ["apt-get", "install"] for commands in plans for c in commands):
        sh(*sudo, "apt-get", "update", "-q")
    for commands in plans:
        for command in commands:
            sh(*sudo, *command)
    still = [(t, why) for t in missing if (why := t.check()) is not None]
    for t, why in still:
        print(f"run.sh: {t.kind} at {t.host}:{t.port} still does not answer: {why}", file=sys.stderr)
    return EXIT_UNAVAILABLE if still else 0


if __name__ == "__main__":
    sys.exit(main())
