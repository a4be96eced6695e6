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
    with socketserver.TCPServer((os.environ.get("ACGS_BIND", "127.0.0.1"), int(os.environ.get("ACGS_PORT", "5432"))), Ping) as srv:
        srv.serve_forever()
