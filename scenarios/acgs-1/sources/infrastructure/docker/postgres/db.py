"""A stand-in database server: keeps real data under $PGDATA and answers "OK" on its TCP port."""

import os
import socketserver
import sqlite3

DATA = os.environ.get("PGDATA", "/var/lib/postgresql/data")


class Ping(socketserver.StreamRequestHandler):
    """Any connection gets one line: the server and how many rows it holds."""

    def handle(self):
        with sqlite3.connect(os.path.join(DATA, "acgs.sqlite")) as db:
            rows = db.execute("select count(*) from policies").fetchone()[0]
        self.wfile.write(f"OK postgres-sandbox 15 rows={rows}\n".encode())


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
    os.makedirs(DATA, exist_ok=True)
    with open(os.path.join(DATA, "PG_VERSION"), "w") as fh:
        fh.write("15\n")
    with sqlite3.connect(os.path.join(DATA, "acgs.sqlite")) as db:
        db.execute("create table if not exists policies (id integer primary key, name text, version text)")
        if db.execute("select count(*) from policies").fetchone()[0] == 0:
            db.executemany("insert into policies (name, version) values (?, ?)",
                           [("transparency", "1.0"), ("accountability", "2.1"), ("least-privilege", "2.0")])
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.TCPServer((_bind(), int(os.environ.get("ACGS_PORT", "5432"))), Ping) as srv:
        srv.serve_forever()
