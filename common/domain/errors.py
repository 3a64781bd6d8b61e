"""Domain errors, each carrying the HTTP status it maps to.

    ShopError                      base; `status_code`, `message`
    ├── InvalidInput        400    a request field or body is malformed
    │   └── BodyTooLarge    413
    ├── Unauthenticated     401    no bearer token, or one that fails verification
    ├── Forbidden           403    a valid token acting for someone else, or lacking a scope
    ├── NotFound            404    OrderNotFound, AccountNotFound, RouteNotFound
    ├── MethodNotAllowed    405
    ├── Conflict            409    AccountExists
    ├── IdempotencyKeyReused 422   the same Idempotency-Key with a different request
    └── Unavailable         503    a database, broker or backend cannot be reached

`InvalidMessage` is not an HTTP error: a broker message that can never be processed (dead-lettered).
"""


class ShopError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ShopError):
    status_code = 400


class BodyTooLarge(InvalidInput):
    status_code = 413


class Unauthenticated(ShopError):
    """`challenge` is the `WWW-Authenticate` header of the 401 (RFC 6750 3): `error` only when a token came."""
    status_code = 401

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.challenge = f'Bearer error="{error}"' if error else "Bearer"


class Forbidden(ShopError):
    """With `scope`, the 403 names the missing scope in its challenge (RFC 6750 3.1 `insufficient_scope`)."""
    status_code = 403

    def __init__(self, message: str, scope: str | None = None) -> None:
        super().__init__(message)
        self.challenge = f'Bearer error="insufficient_scope", scope="{scope}"' if scope else None


class NotFound(ShopError):
    status_code = 404


class OrderNotFound(NotFound):
    def __init__(self, order_id: int) -> None:
        super().__init__(f"Order {order_id} not found.")


class AccountNotFound(NotFound):
    def __init__(self, user_id: int) -> None:
        super().__init__(f"Account for user {user_id} not found.")


class RouteNotFound(NotFound):
    def __init__(self, path: str) -> None:
        super().__init__(f"No route for {path}.")


class MethodNotAllowed(ShopError):
    status_code = 405


class Conflict(ShopError):
    status_code = 409


class AccountExists(Conflict):
    def __init__(self, user_id: int) -> None:
        super().__init__(f"Account for user {user_id} already exists.")


class IdempotencyKeyReused(ShopError):
    status_code = 422


class Unavailable(ShopError):
    status_code = 503


class InvalidMessage(Exception):
    """A broker message that can never be processed; it belongs in the dead-letter queue."""
