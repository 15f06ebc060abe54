"""ASGI middleware of the server: request metrics, Host / Origin checks and security headers, the API key, and
the request body limit and read timeout.

Written as plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that a handler still sees the client's
``http.disconnect`` and can cancel its job.

API key: ``Authorization: Bearer KEY``, or HTTP basic auth whose password is KEY (any user name) — or whose
``user:password`` is KEY, for keys written like A1111's ``--api-auth user:password``. Every path needs it
except ``/health``, the page at ``/`` and its files under ``/static/``.

Browsers: without an API key, a request whose ``Host`` is neither the address the server was reached on (loopback
names for a loopback server) nor an ``--allowed-hosts`` name gets 403, which stops DNS rebinding. A state-changing
request (not GET/HEAD/OPTIONS) sent by a browser from another origin (``Origin`` or ``Sec-Fetch-Site`` say so) gets
403 whether or not a key is set. Every response carries ``X-Content-Type-Options: nosniff`` and forbids framing.
"""

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import urllib.parse

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))


async def _send_json(send, status, body, headers=()):
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


def _header(scope, name):
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def key_matches(authorization, api_key):
    """Whether an ``Authorization`` header value carries ``api_key`` (Bearer or basic), in constant time."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    expected = api_key.encode()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.strip().encode(), expected)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _, _, password = decoded.partition(b":")
        # both comparisons run, so the time taken does not tell which form was close
        as_password = hmac.compare_digest(password, expected)
        as_pair = hmac.compare_digest(decoded, expected)
        return as_password or as_pair
    return False


def _host_name(value):
    """The host name of a ``Host`` header or URL authority, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _is_loopback(host):
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostOriginMiddleware:
    """403 for a ``Host`` that is not this server (when ``check_host``) and for cross-origin state changes.

    ``allowed_hosts``: extra host names (``"*"``: any); the address the client connected to (``scope["server"]``)
    is always allowed, and loopback names when it is a loopback address.
    """

    def __init__(self, app, *, allowed_hosts=(), check_host=True, metrics=None):
        self.app = app
        self.allowed_hosts = {_host_name(h) for h in allowed_hosts}
        self.check_host = check_host
        self.metrics = metrics

    def host_allowed(self, scope, host_header):
        if host_header is None or "*" in self.allowed_hosts:
            return True  # HTTP/1.0 without Host is no browser
        host = _host_name(host_header)
        if host in self.allowed_hosts:
            return True
        server = scope.get("server") or (None, None)
        local = str(server[0]).lower() if server[0] is not None else None
        if local is not None and host == local:
            return True
        return local is not None and _is_loopback(local) and _is_loopback(host)

    @staticmethod
    def cross_origin(scope, host_header):
        """Why a browser request is cross-origin, or None."""
        site = _header(scope, b"sec-fetch-site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            return f"Sec-Fetch-Site: {site.strip()}"
        origin = _header(scope, b"origin")
        if origin is None:
            return None
        parts = urllib.parse.urlsplit(origin.strip())
        if origin.strip() == "null" or parts.scheme not in ("http", "https") or host_header is None or \
                parts.netloc.lower() != host_header.strip().lower():
            return f"Origin {origin.strip()[:100]!r}"
        return None

    async def _refuse(self, send, reason, detail):
        if self.metrics is not None:
            self.metrics.refused.inc(reason=reason)
        await _send_json(send, 403, {"detail": detail})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host_header = _header(scope, b"host")
        if self.check_host and not self.host_allowed(scope, host_header):
            shown = host_header.strip()[:100]
            return await self._refuse(send, "host", f"Host {shown!r} is not this server's address; start the "
                                                    f"server with --allowed-hosts {_host_name(shown)} to accept it")
        if scope.get("method") not in SAFE_METHODS:
            why = self.cross_origin(scope, host_header)
            if why is not None:
                return await self._refuse(send, "cross_origin", f"cross-origin {scope.get('method')} refused "
                                                                f"({why}); use the page this server serves")
        return await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Adds ``SECURITY_HEADERS`` to every response that does not set them itself."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {key.lower() for key, _ in headers}
                headers.extend((key, value) for key, value in SECURITY_HEADERS if key not in present)
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, with_headers)


class ApiKeyMiddleware:
    """401 unless the request carries the API key (public paths excepted)."""

    def __init__(self, app, api_key):
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.api_key:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        if key_matches(_header(scope, b"authorization"), self.api_key):
            return await self.app(scope, receive, send)
        # a browser opening /docs gets a basic-auth prompt; API clients (and the page's fetch calls, which
        # must not pop up a browser dialog) get a Bearer challenge
        accept = _header(scope, b"accept") or ""
        challenge = b'Basic realm="sd-keras"' if "text/html" in accept else b'Bearer realm="sd-keras"'
        await _send_json(send, 401, {"detail": "missing or wrong API key (send 'Authorization: Bearer KEY')"},
                         [(b"www-authenticate", challenge)])


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: by Content-Length up front, else while it streams in; 408 when
    no part of the body arrives for ``read_timeout`` seconds (a stalled client does not hold a connection).

    The body is read here and replayed to the app; after it, ``receive`` passes through, so the app still sees
    the client disconnect. A client gone before the end of its body gets no response (the metrics count it as a
    client disconnect).
    """

    def __init__(self, app, max_bytes, read_timeout=None, metrics=None):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                if self.metrics is not None:
                    self.metrics.refused.inc(reason="read_timeout")
                return await _send_json(send, 408, {"detail": f"the request body stalled: nothing arrived for "
                                                              f"{self.read_timeout:g} s"},
                                        [(b"connection", b"close")])
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        limit_mb = self.max_bytes / 2**20
        await _send_json(send, 413, {"detail": f"request body is larger than {limit_mb:g} MB"},
                         [(b"connection", b"close")])


class MetricsMiddleware:
    """Counts every response by endpoint (the route, never the raw path), method and status.

    A request that ends without a response because its client went away (mid-body, or while it waited) is
    counted with status 499 and as a client disconnect, not as a server error.
    """

    def __init__(self, app, metrics, known_paths):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    def _endpoint(self, path):
        if path in self.known_paths:
            return path
        if path.startswith("/static/"):
            return "/static"
        return "other"  # keeps the label set bounded whatever paths clients try

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": None}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, record)
            failed = False
        except Exception as error:
            from starlette.requests import ClientDisconnect

            failed = not isinstance(error, ClientDisconnect)
            raise
        finally:
            code = status["code"]
            if code is None:  # no response: the app failed, or the client left before one was due
                code = 500 if failed else 499
            endpoint = self._endpoint(scope.get("path", ""))
            self.metrics.requests.inc(endpoint=endpoint, method=scope.get("method", ""), status=str(code))
            if code == 499:
                self.metrics.client_disconnects.inc(endpoint=endpoint)
            if code >= 500 and code != 503:  # 503 is the queue saying "busy", counted as a rejected job
                self.metrics.errors.inc(type="http_5xx")
