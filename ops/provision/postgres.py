"""PostgreSQL: each service's role (LOGIN and nothing more) owning its database, which no other role may connect to.

PostgreSQL 15 gives the `public` schema to `pg_database_owner`, so the role that owns a database may create its
tables there: the service then creates and migrates its own tables at start-up, as with the superuser. A database
created earlier by the superuser is handed over: its owner, and the tables, sequences, views, types and routines
of its `public` schema, so that the service can alter them in later migrations."""
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import cursor as Cursor
from psycopg2.extensions import encrypt_password, make_dsn, parse_dsn

from ops.provision import ProvisioningError

LIMITS = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")

# (kind, name) of every object of schema public of the current database that `role` does not own: what ALTER
# ... OWNER TO must hand over. Not indexes, sequences of serial or identity columns, arrays and row types (they
# follow their table or type), nor an extension's objects (`deptype` 'e'), which stay the extension's owner's.
NOT_OWNED = """
WITH role AS (SELECT oid FROM pg_roles WHERE rolname = %(role)s),
     public AS (SELECT oid FROM pg_namespace WHERE nspname = 'public')
SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::regclass::text
  FROM pg_class c
 WHERE c.relnamespace = (SELECT oid FROM public) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND c.relowner <> (SELECT oid FROM role)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                               AND d.deptype IN ('a', 'i', 'e'))
UNION ALL
SELECT 'TYPE', t.oid::regtype::text
  FROM pg_type t
 WHERE t.typnamespace = (SELECT oid FROM public) AND t.typowner <> (SELECT oid FROM role)
   AND (t.typtype IN ('e', 'd', 'r')
        OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                                               AND d.deptype = 'e')
UNION ALL
SELECT 'ROUTINE', p.oid::regprocedure::text
  FROM pg_proc p
 WHERE p.pronamespace = (SELECT oid FROM public) AND p.proowner <> (SELECT oid FROM role)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                               AND d.deptype = 'e')
UNION ALL
SELECT 'SCHEMA', 'public'
  FROM pg_namespace
 WHERE nspname = 'public' AND nspowner NOT IN ((SELECT oid FROM role), 'pg_database_owner'::regrole)
"""


@dataclass(frozen=True)
class DatabaseOwner:
    """A service's role, its password (None: left as it is, or none for a new role) and its database."""
    role: str
    password: str | None
    database: str

    @classmethod
    def from_dsn(cls, dsn: str) -> "DatabaseOwner":
        """The role, password and database a service's DSN names; raises `ProvisioningError` if it names no
        user or no database."""
        params = parse_dsn(dsn)
        missing = [what for key, what in (("user", "user"), ("dbname", "database")) if not params.get(key)]
        if missing:
            raise ProvisioningError(f"the DSN names no {' and no '.join(missing)}")
        return cls(params["user"], params.get("password") or None, params["dbname"])


def provision(admin_dsn: str, owners: Sequence[DatabaseOwner], say: Callable[[str], None] = print) -> None:
    """Create or update each owner's role (LOGIN, not a superuser, no CREATEDB, CREATEROLE, REPLICATION or
    BYPASSRLS; its password stored as a SCRAM-SHA-256 verifier, never sent in clear), its database owned by it
    and closed to PUBLIC and to the other owners, and hand it what the database's `public` schema holds.

    Raises `ProvisioningError`, changing nothing, if two owners share a role or a database, or a role is a
    superuser or the admin DSN's own; `psycopg2.Error` if the server fails."""
    for key in ("role", "database"):
        names = [getattr(owner, key) for owner in owners]
        if len(set(names)) < len(names):
            raise ProvisioningError(f"the services share a {key} ({', '.join(names)}): each needs its own")
    with _admin(admin_dsn) as cur:
        for owner in owners:
            _check_role(cur, owner.role)
        for owner in owners:
            _ensure_role(cur, owner, say)
        for owner in owners:
            _ensure_database(cur, owner, [other.role for other in owners if other is not owner], say)
    for owner in owners:
        with _admin(make_dsn(admin_dsn, dbname=owner.database), autocommit=False) as cur:
            _hand_over(cur, owner, say)


@contextmanager
def _admin(dsn: str, autocommit: bool = True) -> Iterator[Cursor]:
    """A cursor of a new connection on `dsn`; without autocommit, one transaction committed if no error."""
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        conn.autocommit = autocommit
        with conn.cursor() as cur:
            yield cur
        if not autocommit:
            conn.commit()
    finally:
        conn.close()  # an uncommitted transaction is rolled back


def _check_role(cur: Cursor, role: str) -> None:
    cur.execute("SELECT rolsuper, rolname = current_user FROM pg_roles WHERE rolname = %s", (role,))
    found = cur.fetchone()
    if found and found[0]:
        raise ProvisioningError(f"role {role} is a superuser: give the service a role of its own (provisioning "
                                "never demotes an existing superuser)")
    if found and found[1]:
        raise ProvisioningError(f"role {role} is the admin DSN's own: give the service a role of its own")


def _ensure_role(cur: Cursor, owner: DatabaseOwner, say: Callable[[str], None]) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner.role,))
    exists = cur.fetchone() is not None
    password: sql.Composable = sql.SQL("")
    if owner.password is not None:
        verifier = encrypt_password(owner.password, owner.role, cur.connection, "scram-sha-256")
        password = sql.SQL(" PASSWORD {}").format(sql.Literal(verifier))
    cur.execute(sql.SQL("{} ROLE {} {}{}").format(sql.SQL("ALTER" if exists else "CREATE"),
                                                  sql.Identifier(owner.role), LIMITS, password))
    cur.execute("SELECT string_agg(g.rolname, ', ') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s", (owner.role,))
    [member_of] = cur.fetchone() or (None,)  # an aggregate: always one row
    say(f"postgres: role {owner.role} {'updated' if exists else 'created'}: login"
        f"{', password set' if owner.password is not None else ' (no password given: unchanged, or none)'}; "
        "not a superuser, no CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS"
        + (f"; WARNING: it is a member of {member_of} and keeps what they may do" if member_of else ""))


def _ensure_database(cur: Cursor, owner: DatabaseOwner, others: list[str], say: Callable[[str], None]) -> None:
    database, role = sql.Identifier(owner.database), sql.Identifier(owner.role)
    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (owner.database,))
    found = cur.fetchone()
    if found is None:
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
        done = "created"
    elif found[0] != owner.role:
        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, role))
        done = f"handed over from {found[0]}"
    else:
        done = "kept"
    # Every role may connect to every database unless PUBLIC's CONNECT is revoked; the owner keeps its own.
    cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
    for other in others:  # a grant made by hand earlier
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(database, sql.Identifier(other)))
    say(f"postgres: database {owner.database} {done}, owned by {owner.role}; CONNECT revoked from PUBLIC")


def _hand_over(cur: Cursor, owner: DatabaseOwner, say: Callable[[str], None]) -> None:
    cur.execute(NOT_OWNED, {"role": owner.role})
    objects = cur.fetchall()
    for kind, name in objects:
        # `name` comes from regclass/regtype/regprocedure output: already quoted where it needs to be.
        cur.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), sql.SQL(name),
                                                              sql.Identifier(owner.role)))
    if objects:
        say(f"postgres: database {owner.database}: {len(objects)} objects of schema public handed over to "
            f"{owner.role} ({', '.join(name for _, name in objects)})")
