import json
from decimal import Decimal

from tornado.httpclient import AsyncHTTPClient


async def request(port, method, path, body=None, raw=None, headers=None):
    """(status, decoded JSON) of a request to a service on localhost; never raises for HTTP errors."""
    payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", method=method, body=payload, raise_error=False,
        headers={"Content-Type": "application/json", **(headers or {})}, allow_nonstandard_methods=True)
    return response.code, json.loads(response.body, parse_float=Decimal)
