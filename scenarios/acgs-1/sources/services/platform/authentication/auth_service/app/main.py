"""ACGS-1 auth_service service: a small WSGI app (bottle) with a health endpoint."""

import os
import time

from itsdangerous import URLSafeTimedSerializer
from bottle import Bottle, response, run

app = Bottle()
STARTED = time.time()


@app.get("/health")
def health():
    """Return the service's health as JSON."""
    response.content_type = "application/json"
    return {"status": "healthy", "service": "auth_service", "uptime_s": round(time.time() - STARTED, 1)}


@app.post("/token")
def token():
    """Issue a (toy) signed session token."""
    return {"token": URLSafeTimedSerializer(os.environ.get("ACGS_SECRET", "sandbox")).dumps({"sub": "demo"})}


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
    # ACGS_BIND/ACGS_PORT: the sandbox runs every service on the host network, one 127.0.x.y per host.
    run(app, host=_bind(), port=int(os.environ.get("ACGS_PORT", "8000")), quiet=True)
