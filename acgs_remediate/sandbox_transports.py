"""How a sandbox exposes its engines the way a production fleet is reached: ssh:// and tcp:// with TLS.

- tls: each engine also listens on ``tcp://127.A.B.N:2376`` with ``--tlsverify`` and certificates made at
  ``sandbox up`` with the openssl CLI (D/tls: a CA, one server certificate naming every engine address, one
  client certificate). The inventory verifies the engine against the CA and presents the client certificate.
- ssh: one real sshd (openssh-server) on ``127.A.B.250:2222`` (a non-default port, as behind a firewall),
  root login only with keys whose authorized_keys entry forces
  ``docker -H unix://<that engine's socket> system dial-stdio`` (``restrict``: no shell, no forwarding), one
  key per host. D/ssh/config names each host by an alias (Host sb-h01 -> HostName, Port, User, IdentityFile,
  known_hosts), the way an operator's ~/.ssh/config does; the inventory uses ``ssh://sb-h01`` with
  ``docker_ssh_config: D/ssh/config`` (ssh -F; without it ssh reads ~/.ssh/config).

A.B comes from the sandbox directory, so concurrent sandboxes never share an address. Only 127.x addresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineError, EnvironmentProblem, UsageError

TRANSPORTS = ("unix", "ssh", "tls")
TLS_PORT = 2376
SSH_PORT = 2222
SSHD_HOST_OCTET = 250


def parse_transports(value: str) -> list[str]:
    """Return the transports of ``--transport`` (one or a comma list, the first one writes inventory.yml)."""
    items = [t.strip().lower() for t in (value or "unix").split(",") if t.strip()]
    bad = [t for t in items if t not in TRANSPORTS]
    if bad or not items:
        raise UsageError(
            f"--transport {value!r}: unknown transport {bad[0] if bad else '(none)'}",
            hint="use unix, ssh or tls (or a comma list such as ssh,tls)",
        )
    return list(dict.fromkeys(items))


def address_base(directory: Path) -> str:
    """Return the 127.A.B prefix of the sandbox in ``directory`` (stable; distinct per directory)."""
    digest = hashlib.sha1(str(directory).encode()).digest()
    return f"127.{64 + digest[0] % 128}.{1 + digest[1] % 250}"


def engine_address(directory: Path, index: int) -> str:
    """Return the 127.x address engine ``index`` (0-based) listens on for tcp://."""
    return f"{address_base(directory)}.{index + 1}"


def sshd_address(directory: Path) -> str:
    """Return the 127.x address of the sandbox's sshd."""
    return f"{address_base(directory)}.{SSHD_HOST_OCTET}"


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our argv
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise EngineError(f"{what} failed: {last[-1] if last else f'exit {proc.returncode}'}")


def _tool(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise EnvironmentProblem(f"{program} not found", hint=f"apt-get install {package} (or run 'make setup')")
    return path


@dataclass(frozen=True)
class TLSFiles:
    """The certificates of a sandbox's TLS endpoints (PEM files)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server-cert.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "key.pem"


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """Create a CA (key, certificate) named ``name`` in ``directory``; return (cert, key) paths."""
    openssl = _tool("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = directory / f"{name}-key.pem", directory / f"{name}.pem"
    _run([openssl, "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)], "openssl (CA key)")
    _run(
        [openssl, "req", "-x509", "-new", "-key", str(key), "-days", "30", "-subj", f"/CN={name}", "-out", str(cert)],
        "openssl (CA certificate)",
    )
    return cert, key


def sign(directory: Path, name: str, ca: tuple[Path, Path], ips: list[str], client: bool) -> tuple[Path, Path]:
    """Create a key and a certificate for ``name`` signed by ``ca`` (server: naming ``ips``); return (cert, key)."""
    openssl = _tool("openssl", "openssl")
    key, csr, cert = directory / f"{name}-key.pem", directory / f"{name}.csr", directory / f"{name}-cert.pem"
    ext = directory / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    lines = [f"extendedKeyUsage={usage}"]
    if ips:
        lines.append("subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips))
    ext.write_text("\n".join(lines) + "\n")
    _run([openssl, "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)], "openssl (key)")
    _run([openssl, "req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr)], "openssl (request)")
    _run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca[0]),
            "-CAkey",
            str(ca[1]),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        ],
        "openssl (sign)",
    )
    csr.unlink(missing_ok=True)
    ext.unlink(missing_ok=True)
    os.chmod(key, 0o600)
    return cert, key


def prepare_tls(directory: Path, hosts: int) -> TLSFiles:
    """Create D/tls: a CA, a server certificate for every engine address, a client certificate."""
    files = TLSFiles(directory / "tls")
    if files.client_key.is_file() and files.server_key.is_file():
        return files
    shutil.rmtree(files.directory, ignore_errors=True)
    ca = make_ca(files.directory, "ca")
    ips = [engine_address(directory, i) for i in range(hosts)]
    cert, key = sign(files.directory, "server", ca, ips, client=False)
    cert.rename(files.server_cert)
    key.rename(files.server_key)
    cert, key = sign(files.directory, "client", ca, [], client=True)
    cert.rename(files.client_cert)
    key.rename(files.client_key)
    return files


def tls_daemon_args(directory: Path, index: int) -> list[str]:
    """Return the dockerd arguments that add a verified TLS listener for engine ``index``."""
    files = TLSFiles(directory / "tls")
    return [
        "--tlsverify",
        f"--tlscacert={files.ca}",
        f"--tlscert={files.server_cert}",
        f"--tlskey={files.server_key}",
        "-H",
        f"tcp://{engine_address(directory, index)}:{TLS_PORT}",
    ]


@dataclass(frozen=True)
class SSHFiles:
    """The sandbox's sshd and client-side ssh files."""

    directory: Path

    @property
    def config(self) -> Path:
        """The ssh client config naming every host by an alias (what the inventory passes as ssh -F)."""
        return self.directory / "config"

    @property
    def sshd_config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def pidfile(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def key(self, host: str) -> Path:
        """The private key that leads to ``host``'s engine."""
        return self.directory / f"{host}.key"


def prepare_ssh(directory: Path, engines: list[tuple[str, str]]) -> SSHFiles:
    """Create D/ssh: host key, one restricted key per host (``engines``: (host, unix socket)), configs."""
    keygen = _tool("ssh-keygen", "openssh-client")
    docker = _tool("docker", "docker.io")
    files = SSHFiles(directory / "ssh")
    shutil.rmtree(files.directory, ignore_errors=True)
    files.directory.mkdir(parents=True, mode=0o700)
    hostkey = files.directory / "ssh_host_ed25519_key"
    _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "sandbox-sshd", "-f", str(hostkey)], "ssh-keygen (host)")
    address = sshd_address(directory)
    authorized, client = [], []
    for host, sock in engines:
        key = files.key(host)
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", host, "-f", str(key)], f"ssh-keygen ({host})")
        public = Path(f"{key}.pub").read_text().strip()
        # This key can do one thing: open a stream to this host's engine (as `docker -H ssh://` expects).
        authorized.append(f'restrict,command="{docker} -H unix://{sock} system dial-stdio" {public}')
        client += [
            f"Host {host}",
            f"    HostName {address}",
            f"    Port {SSH_PORT}",
            "    User root",
            f"    IdentityFile {key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {files.directory / 'known_hosts'}",
            "    StrictHostKeyChecking yes",
            "",
        ]
    (files.directory / "authorized_keys").write_text("\n".join(authorized) + "\n")
    os.chmod(files.directory / "authorized_keys", 0o600)
    hostpub = Path(f"{hostkey}.pub").read_text().split()
    (files.directory / "known_hosts").write_text(f"[{address}]:{SSH_PORT} {hostpub[0]} {hostpub[1]}\n")
    files.config.write_text(
        "# Written by 'acgs-remediate sandbox up --transport ssh': one alias per sandbox host, as in ~/.ssh/config.\n"
        + "\n".join(client)
    )
    files.sshd_config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}:{SSH_PORT}",
                f"HostKey {hostkey}",
                f"PidFile {files.pidfile}",
                f"AuthorizedKeysFile {files.directory / 'authorized_keys'}",
                "PermitRootLogin forced-commands-only",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PrintMotd no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "MaxSessions 100",
                "MaxStartups 100:30:200",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    return files


def start_sshd(files: SSHFiles, timeout: float = 10.0) -> int:
    """Start the sandbox's sshd in the foreground of its own session; return its PID once it listens."""
    sshd = _tool("sshd", "openssh-server")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = open(files.log, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(  # noqa: S603 - our argv
            [sshd, "-D", "-f", str(files.sshd_config), "-E", str(files.log)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    finally:
        log.close()
    address = sshd_address(files.directory.parent)
    deadline = time.monotonic() + timeout
    import socket

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = files.log.read_text(errors="replace").strip().splitlines() if files.log.exists() else []
            raise EngineError(f"sshd exited: {tail[-1] if tail else proc.returncode}", hint=f"see {files.log}")
        with contextlib.suppress(OSError), socket.create_connection((address, SSH_PORT), timeout=0.5):
            files.pidfile.write_text(f"{proc.pid}\n")
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise EngineError(f"sshd did not listen on {address}:{SSH_PORT} within {timeout:.0f} s", hint=f"see {files.log}")


def stop_sshd(files: SSHFiles, pid: int | None) -> None:
    """End the sandbox's sshd (by its recorded PID, checked to be our sshd) and its sessions."""
    candidates = {p for p in (pid, _read_pid(files.pidfile)) if p}
    for p in candidates:
        sessions = _descendants(p)
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")  # sshd rewrites it: "sshd: /usr/sbin/sshd -D -f ..."
        except OSError:
            continue
        if str(files.sshd_config).encode() not in cmdline:
            continue  # not ours (a PID reused since)
        for q in [p, *sessions]:  # the listener, then each connection's sshd and the dial-stdio it runs
            with contextlib.suppress(ProcessLookupError):
                os.kill(q, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists(f"/proc/{p}"):
                break
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(p, os.WNOHANG)[0] == p:
                    break
            time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    """Return the PIDs of every process below ``pid`` (sshd's connection processes and their commands)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        q = todo.pop()
        found.append(q)
        todo += children.get(q, [])
    return found


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
