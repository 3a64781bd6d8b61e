"""`python -m ops.dead_letters list|show|replay|purge QUEUE`: the operators' side of dead letters.

The services move a message they can never process to `<queue>.dead` with its reason in its headers
(`common.broker.dead_lettering`); this command inspects them (`store`), puts them back on their queue, or drops
them."""
