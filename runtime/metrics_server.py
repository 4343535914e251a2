"""Serving a process's Prometheus registry over HTTP on `--metrics-host`:`--metrics-port`."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def serve(registry: CollectorRegistry, host: str, port: int) -> int:
    """Start the endpoint in a background thread and return the bound port (useful with port 0)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_port)
    log.info("metrics endpoint listening", extra={"url": f"http://{host}:{bound}/metrics"})
    return bound
