import os

import pytest

# Runs that restart PostgreSQL and RabbitMQ: only where that disturbs no one (CI, which runs alone, or
# private servers chosen with SHOP_TEST_* variables, see scripts/private-brokers.sh).
requires_chaos_opt_in = pytest.mark.skipif(
    os.environ.get("SHOP_CHAOS") != "1",
    reason="restarts PostgreSQL and RabbitMQ; set SHOP_CHAOS=1 (CI does) to run it")
