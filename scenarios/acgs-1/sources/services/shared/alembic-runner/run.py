"""ACGS-1 alembic runner: migrate the database to head, then (optionally) answer GET /health."""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

INI = os.environ.get("ALEMBIC_CONFIG", "/app/alembic.ini")
URL = os.environ.get("DATABASE_URL", "sqlite:////var/lib/acgs/acgs.db")


def current_revision() -> str | None:
    """Return the database's current alembic revision."""
    with create_engine(URL).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Health(BaseHTTPRequestHandler):
    """GET /health -> {"status": "healthy", "revision": ...}."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        ok = self.path == "/health"
        body = json.dumps({"status": "healthy", "service": "alembic-runner", "revision": current_revision()}).encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body if ok else b"{}")

    def log_message(self, *args):
        pass


def _bind() -> str:
    """Return the address to listen on: $ACGS_BIND, or with "auto" one derived from the hostname.

    The sandbox runs each engine's services on the host network with the engine's hostname
    (sb-hNN -> 127.0.(100 + (NN-1) // 250).(1 + (NN-1) % 250); anything else -> 127.0.99.1).
    """
    value = os.environ.get("ACGS_BIND", "127.0.0.1")
    if value != "auto":
        return value
    import re
    import socket

    match = re.search(r"(?:^|-)h(\d+)$", socket.gethostname())
    if not match or int(match.group(1)) < 1:
        return "127.0.99.1"
    n = int(match.group(1)) - 1
    return f"127.0.{100 + n // 250}.{1 + n % 250}"


if __name__ == "__main__":
    os.makedirs("/var/lib/acgs", exist_ok=True)
    cfg = Config(INI)
    cfg.set_main_option("sqlalchemy.url", URL)
    command.upgrade(cfg, "head")
    print("migrated to", current_revision(), flush=True)
    if os.environ.get("ACGS_PORT"):
        HTTPServer((_bind(), int(os.environ["ACGS_PORT"])), Health).serve_forever()
