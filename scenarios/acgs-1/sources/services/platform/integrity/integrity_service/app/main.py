"""ACGS-1 integrity_service service: a small WSGI app (bottle) with a health endpoint."""

import os
import time

import hashlib
from bottle import Bottle, response, run

app = Bottle()
STARTED = time.time()


@app.get("/health")
def health():
    """Return the service's health as JSON."""
    response.content_type = "application/json"
    return {"status": "healthy", "service": "integrity_service", "uptime_s": round(time.time() - STARTED, 1)}


@app.get("/digest/<text>")
def digest(text):
    """Return the SHA-256 digest of ``text``."""
    return {"sha256": hashlib.sha256(text.encode()).hexdigest()}


if __name__ == "__main__":
    # ACGS_BIND/ACGS_PORT: the sandbox runs every service on the host network, one 127.0.x.y per host.
    run(app, host=os.environ.get("ACGS_BIND", "127.0.0.1"), port=int(os.environ.get("ACGS_PORT", "8000")), quiet=True)
