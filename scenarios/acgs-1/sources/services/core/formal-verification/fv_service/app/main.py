"""ACGS-1 fv_service service: a small WSGI app (bottle) with a health endpoint."""

import os
import time

import json
from bottle import Bottle, response, run

app = Bottle()
STARTED = time.time()


@app.get("/health")
def health():
    """Return the service's health as JSON."""
    response.content_type = "application/json"
    return {"status": "healthy", "service": "fv_service", "uptime_s": round(time.time() - STARTED, 1)}


@app.post("/verify")
def verify():
    """Check a (toy) policy document: it must be a JSON object with a "rule"."""
    from bottle import request
    doc = json.loads(request.body.read() or b"{}")
    return {"verified": isinstance(doc, dict) and "rule" in doc}


if __name__ == "__main__":
    # ACGS_BIND/ACGS_PORT: the sandbox runs every service on the host network, one 127.0.x.y per host.
    run(app, host=os.environ.get("ACGS_BIND", "127.0.0.1"), port=int(os.environ.get("ACGS_PORT", "8000")), quiet=True)
