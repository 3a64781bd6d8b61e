"""TLS for tests: a certificate authority made on the spot, and a private PostgreSQL cluster and RabbitMQ node
that speak TLS with its certificates.

    with tempfile.TemporaryDirectory() as tmp, TlsServers(tmp) as servers:
        servers.pg_dsn("orders")       # postgresql://...@localhost:P/orders?sslmode=verify-full&sslrootcert=...
        servers.amqp_url("vhost")      # amqps://guest:guest@localhost:P/vhost?cafile=...

`TestCA` writes a CA certificate and server certificates (subject alternative names `localhost` and
`127.0.0.1`, EC P-256 keys) with `cryptography`. `TlsPostgres` is a cluster of its own made with Debian's
`pg_createcluster` (`ssl = on`, a random name and a free port, listening on 127.0.0.1, 127.0.0.2 and ::1, and
`hostssl` lines only: a connection without TLS is refused); `TlsRabbit` a RabbitMQ node of its own made with
`scripts/rabbitmq-node.sh` (its own NODENAME, ports and directories) with a TLS listener beside the plaintext
one. Both are removed by `stop()` (the cluster dropped, the node stopped and its directory deleted): the
machine's own `15 main` and default node are never touched. Root only (the servers run as `postgres` and
`rabbitmq`, which must own their keys)."""
import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.infra import Infra, run
from harness.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_VERSION = os.environ.get("PG_VERSION", "15")
SERVER_NAMES = ("localhost", "127.0.0.1")
# A loopback address the server certificates do not name: verify-full must refuse it, verify-ca accept it.
UNNAMED_ADDRESS = "127.0.0.2"


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """A certificate authority whose certificate is `self.cert` (a PEM file in `directory`); `issue` makes server
    certificates signed by it. Valid from an hour ago for a day: nothing here outlives a test run."""
    __test__ = False  # not a pytest test class

    def __init__(self, directory, name="shop test CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.not_before, self.not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
        public = self.key.public_key()
        self.certificate = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256()))
        self.cert = self.directory / f"{name.replace(' ', '-')}.crt"
        self.cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self.cert.chmod(0o644)

    def issue(self, directory, names=SERVER_NAMES, owner=None, stem="server"):
        """A server certificate for `names` (DNS names or IP addresses, as subject alternative names):
        (certificate file, key file) in `directory`, the key mode 0600 and owned by the user `owner` if
        given (PostgreSQL refuses a key others can read)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        alternative = []
        for name in names:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternative.append(x509.DNSName(name))
        ca_public = self.key.public_key()
        certificate = (
            x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before).not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(self.key, hashes.SHA256()))
        cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        cert_file.chmod(0o644)
        key_file.touch(mode=0o600)
        key_file.write_bytes(_pem_key(key))
        if owner:
            for path in (directory, cert_file, key_file):
                shutil.chown(path, owner, owner)
            directory.chmod(0o700)
        return cert_file, key_file


class TlsPostgres:
    """A PostgreSQL cluster of its own (`pg_createcluster`) with `ssl = on` and a certificate from `ca`; TLS
    is required by its `pg_hba.conf` (`hostssl` lines only, password authentication)."""

    def __init__(self, ca, directory, password=None):
        self.ca, self.directory = ca, Path(directory)
        self.name = f"shop_tls_{secrets.token_hex(3)}"
        self.port = free_port()
        self.user, self.password = "postgres", password or secrets.token_hex(12)
        self.cluster = f"{PG_VERSION} {self.name}"
        self.infra = Infra(pg_admin_dsn=self.dsn("postgres", host="127.0.0.1"), pg_cluster=self.cluster)
        self.created = False

    def dsn(self, dbname, host="localhost", sslmode="verify-full", rootcert=None, port=None):
        """A URL DSN for `dbname`, verifying the server with `rootcert` (default: the test CA)."""
        query = f"sslmode={sslmode}" + (f"&sslrootcert={rootcert or self.ca.cert}" if sslmode.startswith("verify")
                                        else "")
        return f"postgresql://{self.user}:{self.password}@{host}:{port or self.port}/{dbname}?{query}"

    def create(self):
        cert, key = self.ca.issue(self.directory / "postgres", owner="postgres")
        self.created = True  # from here on `drop` removes whatever pg_createcluster got as far as making
        run(["pg_createcluster", "--start-conf=manual", "-p", str(self.port), PG_VERSION, self.name])
        conf = Path(f"/etc/postgresql/{PG_VERSION}/{self.name}")
        # conf.d (included by Debian's postgresql.conf): pg_createcluster ignores `-o ssl=on`, it turns TLS on
        # only with the machine's snakeoil certificate.
        (conf / "conf.d").mkdir(exist_ok=True)
        (conf / "conf.d" / "tls.conf").write_text(
            f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
            # ::1 too: where /etc/hosts gives `localhost` both addresses, libpq may try ::1 first.
            f"listen_addresses = '127.0.0.1,{UNNAMED_ADDRESS},::1'\n")
        (conf / "pg_hba.conf").write_text("local all postgres peer\nhostssl all all 127.0.0.0/8 scram-sha-256\n"
                                          "hostssl all all ::1/128 scram-sha-256\n")
        self.infra.pg_ctl("start")
        self.infra.wait_pg()
        sql = f"ALTER ROLE {self.user} PASSWORD '{self.password}'"
        run(["runuser", "-u", "postgres", "--", "psql", "-q", "-p", str(self.port), "-c", sql])
        return self

    def drop(self):
        if self.created:
            subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, self.name], capture_output=True)
            # pg_dropcluster leaves the directory of a file it did not write (conf.d/tls.conf).
            shutil.rmtree(f"/etc/postgresql/{PG_VERSION}/{self.name}", ignore_errors=True)
            self.created = False


class TlsRabbit:
    """A RabbitMQ node of its own (`scripts/rabbitmq-node.sh`) with a plaintext listener on `tcp_port` and a TLS
    listener on `tls_port` (127.0.0.1 and 127.0.0.2), its certificate from `ca`; clients are not asked for
    certificates (`verify_none`)."""

    def __init__(self, ca, directory):
        self.ca, self.directory = ca, Path(directory) / "rabbitmq"
        self.nodename = f"shop_tls_{secrets.token_hex(3)}"
        self.tcp_port, self.tls_port, self.dist_port = free_port(), free_port(), free_port()
        self.env_file = self.directory / "rabbitmq-env.conf"
        self.infra = Infra(amqp_base=f"amqp://guest:guest@127.0.0.1:{self.tcp_port}/",
                           rabbitmq_env=str(self.env_file))
        self.launched = False

    def url(self, vhost, host="localhost", cafile=None, scheme="amqps", port=None):
        """An amqps:// URL of `vhost` verifying the node with `cafile` (default: the test CA)."""
        if scheme == "amqp":
            return f"amqp://guest:guest@{host}:{port or self.tcp_port}/{vhost}"
        return f"amqps://guest:guest@{host}:{port or self.tls_port}/{vhost}?cafile={cafile or self.ca.cert}"

    def launch(self):
        """Write the node's files and start it; `wait` waits for it (PostgreSQL can be set up meanwhile)."""
        subprocess.run(["bash", "-c", '. "$0"; write_node_files "$@"', str(ROOT / "scripts/rabbitmq-node.sh"),
                        str(self.directory), self.nodename, str(self.tcp_port), str(self.dist_port),
                        str(self.env_file)], check=True)
        cert, key = self.ca.issue(self.directory / "tls", owner="rabbitmq")
        with open(self.directory / "rabbitmq.conf", "a") as conf:
            conf.write(f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
                       f"listeners.ssl.2 = {UNNAMED_ADDRESS}:{self.tls_port}\n"
                       f"ssl_options.cacertfile = {self.ca.cert}\n"
                       f"ssl_options.certfile = {cert}\n"
                       f"ssl_options.keyfile = {key}\n"
                       "ssl_options.verify = verify_none\n"
                       "ssl_options.fail_if_no_peer_cert = false\n")
        # setsid: the node must not be in the test's process group (a ^C would reach it half-way).
        subprocess.run(["setsid", "rabbitmq-server", "-detached"], env=self.infra._rabbit_env(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.launched = True
        return self

    def wait(self):
        self.infra.wait_rabbit(timeout=90)
        return self

    def stop(self):
        if self.launched:
            try:
                self.infra.rabbitmqctl("stop", timeout=60)
            except Exception:  # noqa: BLE001 - best effort; the pid below is killed regardless
                pass
            pid_file = self.directory / "rabbitmq.pid"
            if pid_file.exists() and pid_file.read_text().strip().isdigit():
                try:
                    os.kill(int(pid_file.read_text().strip()), 9)
                except ProcessLookupError:
                    pass
            self.launched = False
        shutil.rmtree(self.directory, ignore_errors=True)


class TlsServers:
    """The test CA, a second unrelated CA (`wrong_ca`), a `TlsPostgres` and a `TlsRabbit`, all under
    `directory` (made readable for the `postgres` and `rabbitmq` users); `stop()` removes both servers."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.chmod(0o755)
        self.ca = TestCA(self.directory / "ca")
        self.wrong_ca = TestCA(self.directory / "wrong-ca", name="unrelated CA")
        self.postgres = TlsPostgres(self.ca, self.directory)
        self.rabbit = TlsRabbit(self.ca, self.directory)

    def start(self):
        started = time.monotonic()
        try:
            self.rabbit.launch()  # boots while the cluster is made
            self.postgres.create()
            self.rabbit.wait()
        except BaseException:
            self.stop()
            raise
        self.seconds = time.monotonic() - started
        return self

    def stop(self):
        try:
            self.rabbit.stop()
        finally:
            self.postgres.drop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
