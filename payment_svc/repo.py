"""The Payments Service's tables and every SQL statement it runs (SQLAlchemy Core)."""
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.db import delete_batch, execute, fetch_all, fetch_one, older_than, pending_rows

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts", metadata,
    sa.Column("user_id", sa.BigInteger, primary_key=True),
    sa.Column("balance", sa.Numeric(14, 2)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

inbox = sa.Table(
    "inbox", metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("status", sa.Text),
    sa.Column("acked", sa.Boolean),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
)

outbox_ps = sa.Table(
    "outbox_ps", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("order_id", sa.BigInteger),
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

ACCOUNT_FIELDS = (accounts.c.user_id, accounts.c.balance)
NOW = sa.func.clock_timestamp()


async def create_account(cur, user_id):
    """The new account, or None if the user already has one."""
    return await fetch_one(cur, pg_insert(accounts).values(user_id=user_id)
                           .on_conflict_do_nothing().returning(*ACCOUNT_FIELDS))


async def get_account(cur, user_id, lock=False):
    query = sa.select(*ACCOUNT_FIELDS).where(accounts.c.user_id == user_id)
    return await fetch_one(cur, query.with_for_update() if lock else query)


async def set_balance(cur, user_id, balance):
    return await fetch_one(cur, sa.update(accounts).where(accounts.c.user_id == user_id)
                           .values(balance=balance, updated_at=NOW).returning(*ACCOUNT_FIELDS))


async def store_requests(cur, requests):
    """Insert new payment requests as `NEW`; a request seen before is marked unacked again."""
    rows = [dict(order_id=r.order_id, user_id=r.user_id, amount=r.amount)
            for r in sorted({r.order_id: r for r in requests}.values(), key=lambda r: r.order_id)]
    statement = pg_insert(inbox).values(rows)
    await execute(cur, statement.on_conflict_do_update(index_elements=[inbox.c.order_id],
                                                       set_={"acked": False}))


async def users_with_unacked(cur, limit):
    rows = await fetch_all(cur, sa.select(inbox.c.user_id).where(inbox.c.acked.is_(False))
                           .group_by(inbox.c.user_id).order_by(sa.func.min(inbox.c.order_id)).limit(limit))
    return [row["user_id"] for row in rows]


async def claim_users(cur, user_ids):
    """Of `user_ids`, those this transaction now exclusively settles (others are busy in another worker)."""
    claimed = sa.select(sa.column("user_id")).select_from(
        sa.func.unnest(sa.cast(user_ids, sa.ARRAY(sa.BigInteger))).alias("user_id")
    ).where(sa.func.pg_try_advisory_xact_lock(sa.column("user_id")))
    return [row["user_id"] for row in await fetch_all(cur, claimed)]


async def lock_unacked(cur, user_ids):
    """The claimed users' unacked inbox rows, in the order they must be settled."""
    return await fetch_all(cur, sa.select(inbox.c.order_id, inbox.c.user_id, inbox.c.amount, inbox.c.status)
                           .where(inbox.c.user_id.in_(user_ids), inbox.c.acked.is_(False))
                           .order_by(inbox.c.user_id, inbox.c.order_id).with_for_update())


async def lock_accounts(cur, user_ids):
    rows = await fetch_all(cur, sa.select(*ACCOUNT_FIELDS).where(accounts.c.user_id.in_(user_ids))
                           .with_for_update())
    return {row["user_id"]: row["balance"] for row in rows}


async def set_balances(cur, balances):
    await execute(cur, sa.update(accounts).where(accounts.c.user_id.in_(list(balances)))
                  .values(balance=sa.case(balances, value=accounts.c.user_id), updated_at=NOW))


async def settle_inbox(cur, statuses):
    """Mark rows acked with their final {order_id: status}, and queue each status for the Order Service."""
    order_ids = list(statuses)
    await execute(cur, sa.update(inbox).where(inbox.c.order_id.in_(order_ids))
                  .values(status=sa.case(statuses, value=inbox.c.order_id), acked=True,
                          processed_at=sa.func.coalesce(inbox.c.processed_at, NOW)))
    await execute(cur, sa.insert(outbox_ps).values([dict(order_id=o, status=s) for o, s in statuses.items()]))


async def lock_outbox(cur, limit):
    return await fetch_all(cur, sa.select(outbox_ps.c.id, outbox_ps.c.order_id, outbox_ps.c.status)
                           .order_by(outbox_ps.c.id).limit(limit).with_for_update(skip_locked=True))


async def delete_outbox(cur, ids):
    await execute(cur, sa.delete(outbox_ps).where(outbox_ps.c.id.in_(ids)))



async def backlog(cur):
    """{table: (rows waiting, age of the oldest in seconds)} for the unacked inbox and the outbox."""
    return {"inbox": await pending_rows(cur, inbox.c.created_at, inbox.c.acked.is_(False)),
            "outbox_ps": await pending_rows(cur, outbox_ps.c.created_at)}


async def forget_processed(cur, days, limit):
    """Delete up to `limit` settled inbox rows processed more than `days` ago; True if more may be left."""
    return await delete_batch(cur, inbox.c.order_id, limit, inbox.c.acked, inbox.c.status != "NEW",
                              older_than(inbox.c.processed_at, days * 86400))
