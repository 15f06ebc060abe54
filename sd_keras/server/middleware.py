"""ASGI middleware of the server: request metrics, the API key, and the request body limit.

Written as plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that a handler still sees the client's
``http.disconnect`` and can cancel its job.

API key: ``Authorization: Bearer KEY``, or HTTP basic auth whose password is KEY (any user name) — or whose
``user:password`` is KEY, for keys written like A1111's ``--api-auth user:password``. Every path needs it
except ``/health``, the page at ``/`` and its files under ``/static/``.
"""

import base64
import binascii
import hmac
import json

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


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
    """413 for a request body over ``max_bytes``: by Content-Length up front, else while it streams in.

    The body is read here and replayed to the app; after it, ``receive`` passes through, so the app still sees
    the client disconnect.
    """

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
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
    """Counts every response by endpoint (the route, never the raw path), method and status."""

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
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            code = status["code"]
            self.metrics.requests.inc(endpoint=self._endpoint(scope.get("path", "")), method=scope.get("method", ""),
                                      status=str(code))
            if code >= 500 and code != 503:  # 503 is the queue saying "busy", counted as a rejected job
                self.metrics.errors.inc(type="http_5xx")
