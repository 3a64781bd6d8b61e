import json
from decimal import Decimal

import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from common.broker.messages import PaymentRequest, PaymentResult
from common.domain.errors import InvalidMessage
from common.domain.json_text import to_json
from common.runtime.config import load_settings, read_env_file
from common.web.envelope import BaseHandler, envelope
from tests.unit.test_packing import read_one


def test_decimals_render_as_exact_json_numbers():
    assert to_json({"a": Decimal("1000.00"), "b": [Decimal("0.10"), None, "x"]}) == \
        '{"a": 1000.00, "b": [0.10, null, "x"]}'


def test_envelope_status_follows_success():
    assert envelope(True, "ok", order={"status": "NEW"}) == {"status": "Success", "message": "ok",
                                                             "order": {"status": "NEW"}}
    assert envelope(False, "no")["status"] == "Fail"


def test_payment_request_round_trips_exactly():
    request = PaymentRequest(7, 3, Decimal("10.10"))
    assert read_one(PaymentRequest, request.encode()) == request


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"order_id": 1}', b'{"order_id": 1, "user_id": 1, "amount": "-1"}',
                                  b'{"order_id": 0, "user_id": 1, "amount": "1"}',
                                  b'{"order_id": 1, "user_id": 1, "amount": "1", "x": 1}'])
def test_malformed_payment_requests_are_invalid_messages(body):
    with pytest.raises(InvalidMessage):
        read_one(PaymentRequest, body)


def test_payment_result_accepts_only_final_statuses():
    assert read_one(PaymentResult, b'{"order_id": 5, "status": "FINISHED"}') == PaymentResult(5, "FINISHED")
    with pytest.raises(InvalidMessage):
        read_one(PaymentResult, b'{"order_id": 5, "status": "NEW"}')


def test_environment_overrides_env_file_defaults():
    assert read_env_file()["GATEWAY_PORT"] == "8080"
    settings = load_settings({"GATEWAY_PORT": "9999", "ORDER_SVC_URL": "http://a:1, http://b:2/"})
    assert settings.gateway_port == 9999
    assert settings.order_svc_urls == ("http://a:1", "http://b:2")
    assert settings.payment_svc_port == 8082


class Refusing(BaseHandler):
    """Raises the `web.HTTPError` its route names: what Tornado or a library may raise inside a handler."""

    def get(self):
        raise self.error


@pytest.mark.gen_test
@pytest.mark.parametrize("error, code, message", [
    (web.HTTPError(418), 418, "I'm a Teapot"),  # no message of its own: the standard reason phrase
    (web.HTTPError(400, reason="Bad cursor"), 400, "Bad cursor"),  # its own reason phrase
    (web.HTTPError(499), 499, "Unknown"),
    (web.HTTPError(400, "cursor %s is not a number", "x"), 400, "cursor x is not a number"),
    (web.HTTPError(503), 503, "Internal server error."),  # a 5xx names nothing of the server's inside
])
async def test_an_http_error_in_a_handler_is_an_envelope_with_its_reason(error, code, message):
    app = web.Application([(r"/", Refusing, dict(error=error))], log_function=lambda handler: None)
    server = HTTPServer(app)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    try:
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/", raise_error=False)
    finally:
        server.stop()
    assert (response.code, json.loads(response.body)) == (code, {"status": "Fail", "message": message})
