"""Domain errors, each carrying the HTTP status it maps to.

    ShopError                      base; `status_code`, `message`
    ├── InvalidInput        400    a request field or body is malformed
    │   └── BodyTooLarge    413
    ├── NotFound            404    OrderNotFound, AccountNotFound, RouteNotFound
    ├── MethodNotAllowed    405
    ├── Conflict            409    AccountExists
    ├── IdempotencyKeyReused 422   the same Idempotency-Key with a different request
    └── Unavailable         503    a database, broker or backend cannot be reached

`InvalidMessage` is not an HTTP error: a broker message that can never be processed (dead-lettered).
"""


class ShopError(Exception):
    status_code = 500

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class InvalidInput(ShopError):
    status_code = 400


class BodyTooLarge(InvalidInput):
    status_code = 413


class NotFound(ShopError):
    status_code = 404


class OrderNotFound(NotFound):
    def __init__(self, order_id):
        super().__init__(f"Order {order_id} not found.")


class AccountNotFound(NotFound):
    def __init__(self, user_id):
        super().__init__(f"Account for user {user_id} not found.")


class RouteNotFound(NotFound):
    def __init__(self, path):
        super().__init__(f"No route for {path}.")


class MethodNotAllowed(ShopError):
    status_code = 405


class Conflict(ShopError):
    status_code = 409


class AccountExists(Conflict):
    def __init__(self, user_id):
        super().__init__(f"Account for user {user_id} already exists.")


class IdempotencyKeyReused(ShopError):
    status_code = 422


class Unavailable(ShopError):
    status_code = 503


class InvalidMessage(Exception):
    """A broker message that can never be processed; it belongs in the dead-letter queue."""
