"""Each process's HTTP endpoint: /metrics (Prometheus), /healthz, /readyz, /status (JSON) and POST /control.

/control is refused unless a control token is configured, and then needs `Authorization: Bearer <token>`
(MongoShake's sentinel had no authentication)."""
from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kafkashake.runtime.errors import ConfigurationError
from kafkashake.runtime.secrets import redact
from kafkashake.runtime.settings import Secret

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024


class ControlError(ValueError):
    """A /control request that cannot be carried out; the message goes back to the caller."""


class ProcessEndpoint:
    def __init__(self, registry: CollectorRegistry, status: Callable[[], Mapping[str, Any]],
                 ready: Callable[[], tuple[bool, str]], control: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                 control_token: Secret | None) -> None:
        self.registry = registry
        self.status = status
        self.ready = ready
        self.control = control
        self.control_token = control_token
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> int:
        handler = type("Handler", (_Handler,), {"endpoint": self})
        try:
            server = self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}. Another process (a second producer or "
                "consumer on this host?) uses that port: give this one its own --metrics-port (0 picks a free one)"
            ) from exc
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="http-endpoint", daemon=True).start()
        self.port = int(server.server_address[1])
        log.info("HTTP endpoint listening", extra={"url": f"http://{host}:{self.port}/status"})
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    endpoint: ProcessEndpoint

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("http", extra={"request": redact(format % args)})

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, payload: Any) -> None:
        self._send(code, redact(json.dumps(payload, default=str, indent=1)).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        endpoint, path = self.endpoint, self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(endpoint.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "alive"})
        elif path == "/readyz":
            ready, reason = endpoint.ready()
            self._json(200 if ready else 503, {"ready": ready, "reason": reason})
        elif path == "/status":
            self._json(200, endpoint.status())
        else:
            self._json(404, {"error": "unknown path; try /metrics, /healthz, /readyz, /status, POST /control"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/control":
            self._json(404, {"error": "only POST /control"})
            return
        token = self.endpoint.control_token
        if token is None:
            self._json(403, {"error": "control is disabled: start the process with --control-token"})
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token.reveal()}".encode()):
            self._json(401, {"error": "missing or wrong bearer token"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._json(413, {"error": "body too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ControlError("the body must be a JSON object")
            result = self.endpoint.control(body)
        except (ValueError, ControlError) as exc:
            self._json(400, {"error": str(exc)})
            return
        log.info("control applied", extra={"changes": json.dumps(result, default=str)})
        self._json(200, result)
