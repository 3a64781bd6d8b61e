"""Before ./run.sh starts the services: are the configured PostgreSQL and RabbitMQ there?

Reads ORDER_DB_DSN, PAYMENT_DB_DSN and RABBITMQ_URL from the environment over .env, and speaks the first bytes
of each protocol to every host they name (a PostgreSQL SSLRequest, the AMQP 0-9-1 header), so that "something
listens" is not mistaken for "the server is there". Exit 0 when all answer.

TLS as the services will use it: a DSN whose `sslmode` (or PGSSLMODE) is require, verify-ca or verify-full needs
a server that answers the SSLRequest with 'S', and with verify-ca / verify-full the TLS handshake that follows
must verify the server's certificate with `sslrootcert` (verify-full: for the host name of the DSN), as libpq
will. An `amqps://` URL (port 5671 unless it names one) gets a TLS handshake verified with its `cafile` /
`capath` / `cadata` (the system's CAs without one; nothing with `no_verify_ssl=1`) before the AMQP header.
A TLS failure is reported as such (a wrong CA, a certificate for another name, a server without TLS) and is
never "fixed" by installing anything.

When one on this machine does not, and installing is allowed (root, or --install; never with --no-install), on
Debian or Ubuntu it installs the distribution's packages and starts what the installation created, or creates
a new PostgreSQL cluster of its own on the configured port. It never starts, changes or reuses a server that
existed before (a stopped cluster stays stopped: the commands to start it are printed instead). Otherwise it
stops at once with the exact commands to run. Standard library only: it runs before the virtualenv exists."""
import argparse
import base64
import binascii
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common.broker.urls import node_urls  # noqa: E402
from common.runtime.config import read_env_file  # noqa: E402
from common.runtime.endpoints import amqp_hosts, postgres_hosts, reason  # noqa: E402

# sysexits.h EX_UNAVAILABLE: a service the program needs is not available.
EXIT_UNAVAILABLE = 69
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
NOT_THE_SERVER = "something else listens there"


AMQPS_DEFAULT_PORT = 5671
# The first byte of a TLS record: a handshake (0x16) or an alert (0x15) where a plaintext answer was expected.
TLS_RECORD_TYPES = (b"\x15", b"\x16")
PG_TLS_MODES = ("require", "verify-ca", "verify-full")


class TlsProblem(str):
    """Why TLS to a server that is there fails (a wrong CA, a certificate for another name, no TLS where it is
    required): the server answers, so nothing is to be installed or started; a setting must change."""


def answers(host, port, hello, valid, timeout=3.0, tls=None, speaks_tls=None):
    """None if a server of the expected kind answers at host:port, else why not (`connection refused`).

    `tls` (a `Tls`): the handshake first, then `hello` inside it. `speaks_tls`: what to say (a `TlsProblem`)
    when a plaintext `hello` gets a TLS record back."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = raw
            if tls is not None:
                problem, sock = tls.handshake(raw, host)
                if problem:
                    return problem
            with sock:  # the TLS socket owns the descriptor once made
                sock.sendall(hello)
                reply = sock.recv(1)
    except OSError as exc:
        return reason(exc)
    if tls is None and speaks_tls and reply in TLS_RECORD_TYPES:
        return TlsProblem(speaks_tls)
    return None if reply and valid(reply) else NOT_THE_SERVER


class Tls:
    """How a client verifies a server: `cafile`, `capath`, `cadata` (PEM or DER), `verify` (the certificate),
    `check_hostname`, a client certificate `certfile` + `keyfile`; `what` names the settings in messages."""

    def __init__(self, what, cafile=None, capath=None, cadata=None, verify=True, check_hostname=True,
                 certfile=None, keyfile=None, system=False):
        self.what, self.cafile, self.capath, self.cadata = what, cafile, capath, cadata
        self.verify, self.check_hostname = verify, check_hostname and verify
        self.certfile, self.keyfile, self.system = certfile, keyfile, system

    def context(self):
        """The `ssl.SSLContext`, or a `TlsProblem` when a file it names cannot be used."""
        for name, path in (("CA file", self.cafile), ("client certificate", self.certfile),
                           ("client key", self.keyfile)):
            if path and not os.access(path, os.R_OK):
                return TlsProblem(f"{name} {path} cannot be read ({self.what})")
        try:
            if self.cafile or self.capath or self.cadata or self.system or not self.verify:
                context = ssl.create_default_context(cafile=self.cafile, capath=self.capath, cadata=self.cadata)
            else:
                return TlsProblem(f"no CA to verify the server with ({self.what})")
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return TlsProblem(f"the TLS settings cannot be used ({self.what}): {exc}")
        context.check_hostname = self.check_hostname
        if not self.verify:
            context.verify_mode = ssl.CERT_NONE
        return context

    def handshake(self, sock, host):
        """(None, the TLS socket) after a handshake verified as configured, or (a `TlsProblem`, None)."""
        context = self.context()
        if isinstance(context, TlsProblem):
            return context, None
        try:
            return None, context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return TlsProblem(f"certificate verify failed: {exc.verify_message} ({self.what})"), None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ConnectionError) as exc:
            return TlsProblem(f"the connection was closed during the TLS handshake ({exc.__class__.__name__}): "
                              "does this port speak TLS?"), None
        except ssl.SSLError as exc:
            why = (exc.reason or str(exc)).lower().replace("_", " ")
            hint = ": the port does not speak TLS (a plaintext listener?)" if "wrong version" in why else ""
            return TlsProblem(f"TLS handshake failed ({why}){hint}"), None


def check_postgres(host, port, tls=None, sslmode="prefer"):
    """Whether a PostgreSQL answers the SSLRequest; with `sslmode` require, verify-ca or verify-full, whether it
    offers TLS, and with `tls` (verify-ca / verify-full), whether its certificate verifies."""
    reply = []
    why = answers(host, port, PG_SSL_REQUEST, lambda b: reply.append(b) or b in (b"S", b"N"))
    if why is not None:
        return why
    if sslmode in PG_TLS_MODES and reply == [b"N"]:
        return TlsProblem(f"the server does not offer TLS (ssl = off), but sslmode={sslmode} requires it")
    if tls is None or reply != [b"S"]:
        return None
    try:
        with socket.create_connection((host, port), timeout=3.0) as sock:
            sock.sendall(PG_SSL_REQUEST)
            if sock.recv(1) != b"S":
                return "the server stopped offering TLS between two connections"
            problem, tls_sock = tls.handshake(sock, host)
            if tls_sock is not None:
                tls_sock.close()
            return problem
    except OSError as exc:
        return reason(exc)


def check_rabbitmq(host, port, tls=None):
    # A broker answers the protocol header with a Connection.Start method frame (frame type 1).
    return answers(host, port, AMQP_HEADER, lambda b: b == b"\x01", tls=tls,
                   speaks_tls="the port speaks TLS (an AMQPS listener): use amqps://")


class Target:
    """One server the configuration names: kind, address, the variables that name it, and who answers.
    `tls`: the distinct ways the configuration connects to it ({key: (sslmode or None, `Tls` or None, [the
    variables connecting so])}); `blamed`: the variables whose way failed at the last `check`."""

    def __init__(self, kind, host, port):
        self.kind, self.host, self.port = kind, host, port
        self.variables, self.databases, self.users = [], set(), set()
        self.tls, self.blamed = {}, []

    @property
    def local(self):
        return self.host in LOCAL_HOSTS

    def connects(self, key, sslmode, tls, variable):
        self.tls.setdefault(key, (sslmode, tls, []))[2].append(variable)

    def check(self):
        for sslmode, tls, variables in self.tls.values() or [(None, None, self.variables)]:
            if self.kind == "PostgreSQL":
                why = check_postgres(self.host, self.port, tls, sslmode or "prefer")
            else:
                why = check_rabbitmq(self.host, self.port, tls)
            if why is not None:
                self.blamed = variables if isinstance(why, TlsProblem) else self.variables
                return why
        return None


def dsn_parameters(dsn):
    """The connection parameters of a libpq DSN, URI (`postgresql://...?sslmode=...`) or `key=value` form."""
    if "://" in dsn:
        return dict(parse_qsl(urlsplit(dsn.strip()).query))
    params = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn))
    return {k: re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith("'") else v for k, v in params.items()}


def postgres_tls(dsn, env):
    """(sslmode, a `Tls` to verify the server with, or None) as libpq will connect with `dsn`."""
    params = dsn_parameters(dsn)
    sslmode = params.get("sslmode") or env.get("PGSSLMODE") or "prefer"
    rootcert = params.get("sslrootcert") or env.get("PGSSLROOTCERT") or str(Path.home() / ".postgresql/root.crt")
    if sslmode == "require" and rootcert != "system" and Path(rootcert).is_file():
        sslmode = "verify-ca"  # libpq: with a root certificate file, require verifies the chain as verify-ca does
    if sslmode not in ("verify-ca", "verify-full"):
        return sslmode, None
    what = f"sslmode={sslmode}, sslrootcert={rootcert}"
    certfile, keyfile = params.get("sslcert"), params.get("sslkey")
    if rootcert == "system":
        return sslmode, Tls(what, system=True, check_hostname=sslmode == "verify-full", certfile=certfile,
                            keyfile=keyfile)
    return sslmode, Tls(what, cafile=rootcert, check_hostname=sslmode == "verify-full", certfile=certfile,
                        keyfile=keyfile)


def amqp_nodes(urls):
    """[(host, port, a `Tls` or None)] of RABBITMQ_URL: amqps:// nodes (port 5671 by default) with aiormq's TLS
    query parameters (`cafile`, `capath`, `cadata` base64 DER, `certfile`, `keyfile`, `no_verify_ssl`)."""
    nodes = []
    for url in node_urls(urls):
        parts = urlsplit(url)
        if parts.scheme != "amqps":
            nodes.extend((host, port, None) for host, port in amqp_hosts(url))
            continue
        query = dict(parse_qsl(parts.query))
        try:
            cadata = base64.b64decode(query["cadata"], validate=True) if query.get("cadata") else None
        except (binascii.Error, ValueError):
            cadata = None
        verify = query.get("no_verify_ssl", "0") == "0"
        ca = query.get("cafile") or query.get("capath") or ("cadata" if cadata else "the system's CAs")
        tls = Tls(f"CA: {ca}" if verify else "no_verify_ssl", cafile=query.get("cafile"), capath=query.get("capath"),
                  cadata=cadata, verify=verify, certfile=query.get("certfile"), keyfile=query.get("keyfile"),
                  system=True)
        nodes.append((parts.hostname or "localhost", parts.port or AMQPS_DEFAULT_PORT, tls))
    return nodes


def targets(env):
    found = {}

    def target(kind, host, port):
        return found.setdefault((kind, host, port), Target(kind, host, port))
    for variable in ("ORDER_DB_DSN", "PAYMENT_DB_DSN"):
        hosts, dbname = postgres_hosts(env[variable])
        sslmode, tls = postgres_tls(env[variable], env)
        for host, port in hosts:
            t = target("PostgreSQL", host, port)
            t.variables.append(variable)
            t.databases.add(dbname)
            t.connects((sslmode, tls.what if tls else None), sslmode, tls, variable)
            if (user := credentials(env[variable])) is not None:
                t.users.add(user[:2])
    for host, port, tls in amqp_nodes(env["RABBITMQ_URL"]):
        t = target("RabbitMQ", host, port)
        t.variables.append("RABBITMQ_URL")
        t.connects(tls.what if tls else None, None, tls, "RABBITMQ_URL")
        t.users.update(filter(None, (credentials(url) for url in node_urls(env["RABBITMQ_URL"]))))
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
    tls = [(t, why) for t, why in missing if isinstance(why, TlsProblem)]
    missing = [(t, why) for t, why in missing if not isinstance(why, TlsProblem)]
    for t, why in tls:
        print(f"run.sh: {t.kind} answers at {t.host}:{t.port} ({', '.join(t.blamed)}), but TLS fails: {why}",
              file=sys.stderr)
    for t, why in missing:
        print(f"run.sh: {t.kind} is not reachable at {t.host}:{t.port} ({', '.join(t.variables)}): {why}",
              file=sys.stderr)
    if tls:
        # The server is there: installing or starting one would not help, whatever else is missing.
        variables = sorted({v for t, _ in tls for v in t.blamed})
        print(f"\nCorrect the CA or TLS settings in {', '.join(variables)} (or the server's certificate), then run "
              "./run.sh again" + (" (and start what is missing)" if missing else ""), file=sys.stderr)
        return EXIT_UNAVAILABLE
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
