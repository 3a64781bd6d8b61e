"""A small blocking JSON client for the gateway / services."""
import json
import urllib.error
import urllib.request
from decimal import Decimal


def call(base_url, method, path, body=None, timeout=10, headers=None):
    """Send a request; return (status code, decoded JSON body or raw text)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw, parse_float=Decimal)
    except ValueError:
        return status, raw.decode(errors="replace")
