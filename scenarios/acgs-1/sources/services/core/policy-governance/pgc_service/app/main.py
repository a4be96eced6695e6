"""ACGS-1 pgc_service service: a small WSGI app (bottle) with a health endpoint."""

import os
import time

from packaging.version import Version
from bottle import Bottle, response, run

app = Bottle()
STARTED = time.time()


@app.get("/health")
def health():
    """Return the service's health as JSON."""
    response.content_type = "application/json"
    return {"status": "healthy", "service": "pgc_service", "uptime_s": round(time.time() - STARTED, 1)}


@app.get("/policies/<version>")
def policy(version):
    """Return whether a policy version is current (>= 2.0)."""
    return {"version": version, "current": Version(version) >= Version("2.0")}


if __name__ == "__main__":
    # ACGS_BIND/ACGS_PORT: the sandbox runs every service on the host network, one 127.0.x.y per host.
    run(app, host=os.environ.get("ACGS_BIND", "127.0.0.1"), port=int(os.environ.get("ACGS_PORT", "8000")), quiet=True)
