"""The Order Service's tables and every SQL statement it runs (SQLAlchemy Core)."""
import sqlalchemy as sa

from common.db import execute, fetch_all, fetch_one, pending_rows

metadata = sa.MetaData()

orders = sa.Table(
    "orders", metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("description", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

outbox_os = sa.Table(
    "outbox_os", metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("attempts", sa.Integer),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

ORDER_FIELDS = (orders.c.order_id, orders.c.user_id, orders.c.amount, orders.c.description, orders.c.status)
NOW = sa.func.clock_timestamp()


async def insert_order(cur, user_id, amount, description):
    """Insert an order and its outbox row; returns the order."""
    order = await fetch_one(cur, sa.insert(orders)
                            .values(user_id=user_id, amount=amount, description=description)
                            .returning(*ORDER_FIELDS))
    await execute(cur, sa.insert(outbox_os).values(order_id=order["order_id"], user_id=user_id, amount=amount))
    return order


async def get_order(cur, order_id):
    return await fetch_one(cur, sa.select(*ORDER_FIELDS).where(orders.c.order_id == order_id))


async def list_orders(cur, user_id, after, limit):
    query = sa.select(*ORDER_FIELDS).where(orders.c.order_id > after).order_by(orders.c.order_id).limit(limit)
    if user_id is not None:
        query = query.where(orders.c.user_id == user_id)
    return await fetch_all(cur, query)


async def lock_due_outbox(cur, limit):
    """Outbox rows due for (re)sending, locked so no other instance sends them meanwhile."""
    return await fetch_all(cur, sa.select(outbox_os.c.order_id, outbox_os.c.user_id, outbox_os.c.amount,
                                          outbox_os.c.attempts)
                           .where(outbox_os.c.next_attempt_at <= NOW)
                           .order_by(outbox_os.c.order_id)
                           .limit(limit)
                           .with_for_update(skip_locked=True))


async def postpone_outbox(cur, order_ids, first_delay, max_delay):
    """Schedule the next resend of each row: `first_delay` seconds, doubling per attempt, capped."""
    delay = sa.func.least(first_delay * sa.func.power(2, outbox_os.c.attempts), max_delay)
    await execute(cur, sa.update(outbox_os)
                  .where(outbox_os.c.order_id.in_(order_ids))
                  .values(attempts=outbox_os.c.attempts + 1,
                          next_attempt_at=NOW + sa.func.make_interval(0, 0, 0, 0, 0, 0, delay)))


async def existing_order_ids(cur, order_ids):
    rows = await fetch_all(cur, sa.select(orders.c.order_id).where(orders.c.order_id.in_(order_ids)))
    return {row["order_id"] for row in rows}


async def finalize_orders(cur, statuses):
    """Set each still-`NEW` order of {order_id: status} to its final status and drop its outbox row."""
    order_ids = list(statuses)
    await execute(cur, sa.update(orders)
                  .where(orders.c.order_id.in_(order_ids), orders.c.status == "NEW")
                  .values(status=sa.case(statuses, value=orders.c.order_id), updated_at=NOW))
    await execute(cur, sa.delete(outbox_os).where(outbox_os.c.order_id.in_(order_ids)))



async def backlog(cur):
    """{"outbox_os": (rows waiting for a payment result, age of the oldest in seconds)}."""
    return {"outbox_os": await pending_rows(cur, outbox_os.c.created_at)}
