"""Serving the console: cheroot (CherryPy's threaded WSGI server: pure Python, TLS built in,
embeddable in `recsvc serve`), bound to loopback unless API keys are configured."""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from pathlib import Path

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from recsvc.access import ApiKeys
from recsvc.config import ServingConfig
from recsvc.console.app import create_app
from recsvc.console.state import ConsoleState
from recsvc.errors import BadInput

THREADS = 8


@dataclass(frozen=True)
class ConsoleOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    event_store: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_url: str = ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleServer:
    """The console on its own threads; `start` binds and returns, `stop` drains and closes."""

    def __init__(self, server: wsgi.Server, state: ConsoleState, address: str) -> None:
        self._server = server
        self.state = state
        self.address = address
        self._thread: threading.Thread | None = None

    @classmethod
    def build(
        cls, model_dir: Path, config: ServingConfig, options: ConsoleOptions
    ) -> ConsoleServer:
        keys = ApiKeys.load(Path(config.api_keys_file)) if config.api_keys_file else None
        if keys is None and not is_loopback(options.host):
            raise BadInput(
                f"the console binds to {options.host!r} only with API keys configured "
                "(serving.api_keys_file): without them anyone could forget customers"
            )
        if (options.tls_cert is None) != (options.tls_key is None):
            raise BadInput("give both --tls-cert and --tls-key, or neither")
        state = ConsoleState.open(model_dir, config, options.event_store)
        tls = options.tls_cert is not None
        app = create_app(state, keys, secure_cookies=tls, metrics_url=options.metrics_url)
        server = wsgi.Server((options.host, options.port), app, numthreads=THREADS)
        if tls:
            server.ssl_adapter = BuiltinSSLAdapter(str(options.tls_cert), str(options.tls_key))
        server.prepare()  # binds now, so that a port in use fails here
        host, port = server.bind_addr[:2]
        shown = f"[{host}]" if ":" in host else host
        return cls(server, state, f"{'https' if tls else 'http'}://{shown}:{port}/")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve, name="console", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.state.close()
