import pytest
from psycopg2.extensions import parse_dsn

from common.db.pg_hosts import single_host_dsns


def test_a_single_host_dsn_is_kept_as_it_is():
    dsn = "postgresql://postgres:secret@localhost:5432/orders"
    assert single_host_dsns(dsn) == [dsn]


def test_a_multi_host_url_becomes_one_dsn_per_host_in_order():
    dsns = single_host_dsns("postgresql://u:pw@10.0.0.1:5441,10.0.0.2:5442/orders?target_session_attrs=read-write")
    assert [parse_dsn(d) for d in dsns] == [
        {"user": "u", "password": "pw", "host": "10.0.0.1", "port": "5441", "dbname": "orders"},
        {"user": "u", "password": "pw", "host": "10.0.0.2", "port": "5442", "dbname": "orders"},
    ]


def test_one_port_serves_every_host_and_a_missing_port_is_libpqs_default():
    assert [parse_dsn(d).get("port") for d in single_host_dsns("host=a,b port=6000 dbname=x")] == ["6000", "6000"]
    assert [parse_dsn(d).get("port") for d in single_host_dsns("postgresql://a:7000,b/x")] == ["7000", None]


def test_host_and_port_lists_that_do_not_pair_are_refused():
    with pytest.raises(ValueError, match="3 hosts but 2 ports"):
        single_host_dsns("host=a,b,c port=1,2 dbname=x")
