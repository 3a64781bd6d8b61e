"""The JSON envelope every response wears, and the base handler that guarantees it."""
import logging
from collections.abc import Awaitable
from http.client import responses
from types import TracebackType
from typing import Any

from tornado import web

from common.domain.errors import BodyTooLarge, InvalidInput, MethodNotAllowed, RouteNotFound, ShopError
from common.domain.json_text import to_json
from common.runtime.config import DEFAULT_MAX_BODY_BYTES
from common.runtime.logs import request_id
from common.web.auth import Authenticator, Principal

REQUEST_ID_HEADER = "X-Request-ID"  # the gateway names every request it forwards
CLIENT_REQUEST_ID_HEADER = "X-Client-Request-ID"  # the X-Request-ID a client sent, kept beside the gateway's

logger = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)


def label(value: str | None) -> str | None:
    """A client-chosen id, if it is safe to log and store (printable ASCII, at most 200 characters), else None."""
    return value if value and value.isascii() and value.isprintable() and len(value) <= 200 else None


def envelope(success: bool, message: str, **data: object) -> dict[str, object]:
    return {"status": "Success" if success else "Fail", "message": message, **data}


def check_body(method: str, size: int, content_type: str | None, max_body_bytes: int) -> None:
    """The checks of a request's body of `size` bytes before anything reads it, for every handler and the gateway's
    proxy alike: at most `max_body_bytes` (`BodyTooLarge`, 413); a POST's, PUT's or PATCH's JSON, a body without a
    Content-Type taken for JSON (`InvalidInput`, 400)."""
    if size > max_body_bytes:
        raise BodyTooLarge(f"Request body must be at most {max_body_bytes} bytes.")
    if size and method in ("POST", "PUT", "PATCH"):
        media_type = "application/json" if content_type is None else content_type.split(";")[0].strip().lower()
        if media_type not in JSON_TYPES:
            raise InvalidInput("Content-Type must be application/json.")


class BaseHandler(web.RequestHandler):
    """Answers every request, failed or not, with the JSON envelope; never a stack trace.

    Dependencies arrive through `initialize` as keyword arguments (the route's dict) and become attributes."""

    max_body_bytes = DEFAULT_MAX_BODY_BYTES  # each application passes the configured one

    def initialize(self, **dependencies: object) -> None:
        for name, value in dependencies.items():
            setattr(self, name, value)

    def prepare(self) -> Awaitable[None] | None:
        rid = label(self.request.headers.get(REQUEST_ID_HEADER))
        if rid:
            self.set_header(REQUEST_ID_HEADER, rid)
        request_id.set(rid or "-")
        check_body(self.request.method or "", len(self.request.body), self.request.headers.get("Content-Type"),
                   self.max_body_bytes)
        return None

    def reply(self, status_code: int, message: str, **data: object) -> None:
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(to_json(envelope(status_code < 400, message, **data)))

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (what a 405's `Allow` header lists)."""
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower()) is not getattr(web.RequestHandler, m.lower())]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, ShopError):
            status_code, message = exc.status_code, exc.message
            challenge = getattr(exc, "challenge", None)  # a 401's (`common.domain.errors.Unauthenticated`)
            if challenge:
                self.set_header("WWW-Authenticate", challenge)
        elif isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code == 405:
            message = MethodNotAllowed(f"Method {self.request.method} not allowed on {self.request.path}.").message
        elif status_code < 500:
            # The reason phrase Tornado's `send_error` gave the status: the error's own, else the standard one.
            reason = exc.reason if isinstance(exc, web.HTTPError) else None
            message = reason or kwargs.get("reason") or responses.get(status_code, "Unknown")
        else:
            message = "Internal server error."
        if status_code == 405:  # RFC 9110: a 405 lists the methods that would work
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.reply(status_code, message)

    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None,
                      tb: TracebackType | None) -> None:
        if isinstance(value, ShopError):
            if value.status_code >= 500:
                logger.warning("%s %s: %s", self.request.method, self.request.path, value.message)
            return
        super().log_exception(typ, value, tb)


class ApiHandler(BaseHandler):
    """A route of the API: `self.principal` (`common.web.auth.Principal`) is known before the method runs, or the
    request was answered 401 (`auth`, an `Authenticator`, is a dependency)."""
    auth: Authenticator
    principal: Principal

    async def prepare(self) -> None:
        super().prepare()
        self.principal = await self.auth.authenticate(self.request.headers.get("Authorization"))


class NotFoundHandler(BaseHandler):
    """The application's default handler: any unknown path is a JSON 404."""

    def prepare(self) -> None:
        raise RouteNotFound(self.request.path)
