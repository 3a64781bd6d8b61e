-- The Order Service's order transaction (order row + outbox row), for pgbench's baseline.
\set uid random(1, 1000)
BEGIN;
INSERT INTO orders (user_id, amount, description) VALUES (:uid, 1, 'bench') RETURNING order_id \gset
INSERT INTO outbox_os (order_id, user_id, amount) VALUES (:order_id, :uid, 1);
END;
