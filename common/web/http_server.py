"""The HTTP server of every process, with bounds a slow or hostile client cannot outstay.

Tornado's defaults keep a connection that sent half a request for an hour and accept connections until the
process runs out of file descriptors (issue 14: 3,000 such connections were all still open 5 s later). Here:
- `CLIENT_IDLE_TIMEOUT`: Tornado 6.6 has one timer for the headers (`HTTP1ConnectionParameters.header_timeout`,
  set by `idle_connection_timeout`): it runs from the connection's opening, or the end of the previous answer,
  to the end of the next request's headers. So it bounds both the idle keep-alive time and a request whose
  headers trickle in;
- `CLIENT_BODY_TIMEOUT`: the body, from the end of its headers (`body_timeout`);
- `MAX_CONNECTIONS`: open connections; one more gets a 503 envelope and is closed at once;
- `TRUSTED_PROXY`: only then are `X-Forwarded-For` / `X-Real-IP` taken as the client's address (`xheaders`).
A connection dropped by a timeout is closed without an answer, as Tornado does."""
import logging
import resource

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from common.web.envelope import envelope, to_json

logger = logging.getLogger(__name__)

# Files kept for everything but client connections: backend pools, database and broker connections, logs.
RESERVED_FILES = 256
# Tornado rejects bodies above this outright; handlers enforce the smaller MAX_BODY_BYTES with a JSON 413.
SERVER_MAX_BODY = 10 * 1024 * 1024

_BUSY_BODY = to_json(envelope(False, "Too many connections; try again later.")).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=UTF-8\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class BoundedHTTPServer(HTTPServer):
    """`HTTPServer` that serves at most `max_connections` connections at once."""

    def initialize(self, request_callback, max_connections, **kwargs):
        super().initialize(request_callback, **kwargs)
        self.max_connections = max_connections
        self.refused = 0

    def handle_stream(self, stream, address):
        # `_connections` is Tornado's own set of the connections it serves (common.runtime.lifecycle reads it too).
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            if self.refused % 1000 == 1:
                logger.warning("%d connections open, the most allowed (MAX_CONNECTIONS): refusing new ones "
                               "(%d so far)", len(self._connections), self.refused)
            refuse(stream)
            return
        super().handle_stream(stream, address)


def refuse(stream):
    """Answer a connection over the cap with the 503 envelope, then close it."""
    def close(written):
        written.exception()  # a client already gone is no news
        stream.close()
    try:
        stream.write(BUSY_RESPONSE).add_done_callback(close)
    except StreamClosedError:
        pass


def connection_cap(wanted, other_files=0):
    """`wanted`, or fewer if the process may not open that many files beside `RESERVED_FILES` and `other_files`
    (the gateway's connections for waiting requests): the soft limit is raised towards the hard one first
    (containers often start with a soft limit of 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FILES + other_files
    if soft < needed and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    cap = max(min(wanted, soft - RESERVED_FILES - other_files), 1)
    if cap < wanted:
        logger.warning("MAX_CONNECTIONS=%d lowered to %d: the process may open only %d files", wanted, cap, soft)
    return cap


def server_options(settings, other_files=0):
    """Keyword arguments of Tornado's `HTTPServer` (or `BoundedHTTPServer`) for the bounds in `settings`."""
    return dict(max_connections=connection_cap(settings.max_connections, other_files), max_body_size=SERVER_MAX_BODY,
                xheaders=settings.trusted_proxy, idle_connection_timeout=settings.client_idle_timeout,
                body_timeout=settings.client_body_timeout)
