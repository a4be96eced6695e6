"""ACGS-1 gs_service service: a small WSGI app (bottle) with a health endpoint."""

import os
import time

from itsdangerous import URLSafeSerializer
from bottle import Bottle, response, run

app = Bottle()
STARTED = time.time()


@app.get("/health")
def health():
    """Return the service's health as JSON."""
    response.content_type = "application/json"
    return {"status": "healthy", "service": "gs_service", "uptime_s": round(time.time() - STARTED, 1)}


@app.post("/synthesize")
def synthesize():
    """Sign a (toy) synthesized policy so that callers can check where it came from."""
    signer = URLSafeSerializer(os.environ.get("ACGS_SECRET", "sandbox"))
    return {"policy": signer.dumps({"rule": "allow", "ts": time.time()})}


if __name__ == "__main__":
    # ACGS_BIND/ACGS_PORT: the sandbox runs every service on the host network, one 127.0.x.y per host.
    run(app, host=os.environ.get("ACGS_BIND", "127.0.0.1"), port=int(os.environ.get("ACGS_PORT", "8000")), quiet=True)
