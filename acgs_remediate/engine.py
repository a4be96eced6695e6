"""The project's one hand-written Engine API client: unix://, tcp:// (with or without TLS) and ssh://.

Standard library only, so the cleanup module (a WANT_JSON script, no AnsiballZ) imports it cheaply.

- unix:// and tcp://: a few kept-alive HTTP/1.1 connections per client (TLS from the host's docker_tls,
  docker_validate_certs, docker_ca_path, docker_client_cert and docker_client_key, verified by ``ssl``).
- ssh://: what the docker CLI does (cli/connhelper/ssh): spawn the ``ssh`` binary, ``ssh [-F cfg] [-l user]
  [-p port] -- HOST docker system dial-stdio``, and speak HTTP over its stdin/stdout. Plain ssh reads the
  user's ~/.ssh/config, so aliases, Port, User, IdentityFile, ProxyJump and the rest decide how a host is
  reached. ONE ssh process per host and process carries every call (requests pipelined over one kept-alive
  stream); a command's child processes (the cleanup module under ansible) join that ssh connection through
  a private ControlPath (``ACGS_SSH_CONTROL_DIR``) instead of logging in again. Programs that run ``ssh``
  themselves (the docker CLI for builds, Compose for deploys) get an ``ssh`` on PATH that adds the same
  options (``ssh_env``); the docker SDK (phase 2's gates) gets a local unix socket piped through that ssh
  (``local_socket``): docker_ssh_config is honoured everywhere, and the host's one connection is joined.

First contact with an engine is a GET /_ping bounded by the host's connect timeout (seconds, default 10):
a host that does not answer fails in seconds, while later calls keep their (image-count scaled) timeouts.
Every failure to reach an engine is an ``EngineConnectError`` whose text is one line saying what failed and
what to check.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CONNECT_TIMEOUT = 10.0
# Set by the first process of a command that opens an ssh stream; its children (ansible, the cleanup
# module) inherit it and join the same ssh connection (ControlMaster) instead of logging in again.
CONTROL_DIR_ENV = "ACGS_SSH_CONTROL_DIR"
_SSH_MAX_STDERR_LINES = 20


class EngineHTTPError(Exception):
    """A non-2xx answer of the engine (status code and the engine's message)."""

    def __init__(self, status_code: int, explanation: str) -> None:
        super().__init__(f"{status_code}: {explanation}")
        self.status_code = status_code
        self.explanation = explanation


class EngineNotFound(EngineHTTPError):
    """A 404 answer (the object is gone)."""


class EngineConnectError(ConnectionError):
    """The engine could not be reached; ``str()`` is one line: what failed and what to check."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach one engine: its URL and the transport settings the inventory gives it.

    ``url``: unix:///path, tcp://host:port, http(s)://host:port or ssh://[user@]host[:port].
    ``ssh_config``: an ssh config file passed as ``ssh -F`` (default: ssh's own, i.e. ~/.ssh/config).
    ``connect_timeout``: seconds allowed for first contact (ssh login or TCP connect, TLS, /_ping).
    """

    url: str
    tls: bool = False
    validate_certs: bool = False
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    ssh_config: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @classmethod
    def of(cls, host: Any) -> Endpoint:
        """Return the endpoint of an inventory ``Host`` (or anything with its attribute names)."""
        return cls(
            url=host.docker_host,
            tls=bool(getattr(host, "tls", False)),
            validate_certs=bool(getattr(host, "validate_certs", False)),
            ca_path=getattr(host, "ca_path", None),
            client_cert=getattr(host, "client_cert", None),
            client_key=getattr(host, "client_key", None),
            ssh_config=getattr(host, "ssh_config", None),
            connect_timeout=float(getattr(host, "connect_timeout", None) or DEFAULT_CONNECT_TIMEOUT),
        )

    @property
    def scheme(self) -> str:
        """Return the URL scheme: unix, tcp, http, https or ssh."""
        return self.url.split("://", 1)[0].lower() if "://" in self.url else ""

    @property
    def uses_tls(self) -> bool:
        """Return whether a tcp:// endpoint is spoken to over TLS."""
        return self.scheme == "https" or (self.scheme == "tcp" and (self.tls or self.validate_certs))


# ---- unix:// and tcp:// connections


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float, connect_timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(self.connect_timeout, self.timeout or self.connect_timeout))
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        self.sock = sock


class _TCPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), min(self.connect_timeout, self.timeout))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.connect_timeout = connect_timeout
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), min(self.connect_timeout, self.timeout))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock.settimeout(self.timeout)


def tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    """Return the TLS context for ``endpoint``: verified against docker_ca_path when docker_validate_certs.

    Raises EngineConnectError naming the host variable whose file is missing or unreadable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if endpoint.validate_certs:
        try:
            if endpoint.ca_path:
                ctx.load_verify_locations(cafile=endpoint.ca_path)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as exc:
            raise EngineConnectError(
                f"TLS: cannot read the CA certificate docker_ca_path={endpoint.ca_path}: {_os_reason(exc)}"
            ) from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if endpoint.client_cert or endpoint.client_key:
        if not (endpoint.client_cert and endpoint.client_key):
            raise EngineConnectError("TLS: set both docker_client_cert and docker_client_key (one is missing)")
        try:
            ctx.load_cert_chain(endpoint.client_cert, endpoint.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise EngineConnectError(
                f"TLS: cannot load the client certificate docker_client_cert={endpoint.client_cert} "
                f"docker_client_key={endpoint.client_key}: {_os_reason(exc)}"
            ) from None
    return ctx


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _tcp_address(endpoint: Endpoint) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(endpoint.url.replace("tcp://", "http://", 1))
    default = 2376 if endpoint.uses_tls else 2375
    return parsed.hostname or "localhost", parsed.port or default


# ---- ssh:// : one `ssh HOST docker system dial-stdio` per host and process, requests pipelined


def ssh_argv(endpoint: Endpoint) -> list[str]:
    """Return the ssh command that opens a byte stream to ``endpoint``'s engine (as the docker CLI does).

    The URL's user and port become ``-l``/``-p`` (they override ~/.ssh/config); everything else (the host
    alias, its HostName, Port, User, IdentityFile, ProxyJump, ...) comes from the ssh configuration.
    BatchMode: no prompt can hang a fleet run (an unknown host key or a passphrase fails at once, clearly).
    """
    parsed = urllib.parse.urlsplit(endpoint.url)
    if not parsed.hostname:
        raise EngineConnectError(f"{endpoint.url}: no host name in the ssh:// URL (write ssh://[user@]host[:port])")
    argv = ["ssh"]
    if endpoint.ssh_config:
        argv += ["-F", endpoint.ssh_config]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(endpoint.connect_timeout))}", "-T"]
    argv += _control_options(endpoint)
    if parsed.username:
        argv += ["-l", urllib.parse.unquote(parsed.username)]
    if parsed.port:
        argv += ["-p", str(parsed.port)]
    # The host as written (an alias stays an alias: ssh resolves it through its config).
    host = parsed.netloc.rsplit("@", 1)[-1]
    host = host.rsplit(":", 1)[0] if parsed.port else host
    return [*argv, "--", host.strip("[]"), "docker", "system", "dial-stdio"]


def _control_key(endpoint: Endpoint) -> str:
    # One control socket per endpoint as the inventory names it, never ssh's %C (user, host, port): two
    # aliases of one sshd with different keys (forced commands leading to different engines) share a %C,
    # and joining the other's connection would send this host's calls to the other host's engine.
    return hashlib.sha256(f"{endpoint.url}\0{endpoint.ssh_config or ''}".encode()).hexdigest()[:20]


def _control_options(endpoint: Endpoint) -> list[str]:
    control = _control_dir()
    if not control:
        return []
    path = f"{control}/{_control_key(endpoint)}"
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={path}", "-o", "ControlPersist=no"]


def ssh_env(endpoint: Endpoint, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``env`` (default os.environ) for a program that runs ``ssh`` from PATH to reach ``endpoint``.

    The docker CLI (builds), Docker Compose (deploys) and the docker SDK (gates) run plain ``ssh [-l user]
    [-p port] -- HOST docker system dial-stdio`` and know nothing of ``docker_ssh_config``. For an ssh://
    endpoint, PATH starts with a directory whose ``ssh`` adds what this client adds: ``-F docker_ssh_config``,
    BatchMode, and the command's ControlPath for this endpoint, so they join the host's ssh connection
    instead of logging in again. Any other endpoint: ``env`` unchanged (a copy).
    """
    out = dict(os.environ if env is None else env)
    directory = _ssh_wrapper_dir(endpoint)
    if directory:
        out["PATH"] = f"{directory}{os.pathsep}{out.get('PATH', os.defpath)}"
    return out


@contextlib.contextmanager
def local_socket(endpoint: Endpoint) -> Iterator[str]:
    """Yield a URL the docker SDK can use for ``endpoint``: its own, or for ssh:// a local ``unix://`` socket.

    The SDK's ssh:// needs paramiko, which this project does not install. For an ssh:// endpoint a unix socket
    in a private 0700 directory is served while the block runs: each connection to it is handed, as stdin and
    stdout, to ``ssh ... HOST docker system dial-stdio`` (``ssh_argv``: docker_ssh_config and the command's
    connection to that host), exactly what the docker CLI does. The directory is removed afterwards.
    """
    if endpoint.scheme != "ssh":
        yield endpoint.url
        return
    argv = ssh_argv(endpoint)
    directory = tempfile.mkdtemp(prefix="acgs-sdk-", dir="/tmp")
    path = os.path.join(directory, "docker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.setblocking(True)
                try:
                    # ssh owns the connection from here: the SDK closing it ends ssh (and the remote dial-stdio).
                    procs.append(
                        subprocess.Popen(  # noqa: S603 - argv built by ssh_argv, no shell
                            argv, stdin=conn, stdout=conn, stderr=subprocess.DEVNULL, start_new_session=True
                        )
                    )
                except OSError:
                    continue  # the SDK sees the connection close and reports it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        stop.set()
        thread.join()
        listener.close()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _ssh_wrapper_dir(endpoint: Endpoint) -> str | None:
    """Return the directory of ``endpoint``'s ``ssh`` wrapper (made once per command), or None if not ssh://."""
    if endpoint.scheme != "ssh":
        return None
    control = _control_dir()
    own = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and "acgs-ssh-" not in d]
    real = shutil.which("ssh", path=os.pathsep.join(own))
    if not control or not real:
        return None  # nothing to add: the program's ssh error says what is missing
    directory = os.path.join(control, f"bin-{_control_key(endpoint)}")
    wrapper = os.path.join(directory, "ssh")
    if not os.path.exists(wrapper):
        options = ["-F", endpoint.ssh_config] if endpoint.ssh_config else []
        options += ["-o", "BatchMode=yes", *_control_options(endpoint)]
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = f"{wrapper}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f'#!/bin/sh\nexec {shlex.join([real, *options])} "$@"\n')
        os.chmod(tmp, 0o700)
        os.replace(tmp, wrapper)
    return directory


_control_lock = threading.Lock()
_control_created: str | None = None


def _control_dir() -> str | None:
    """Return the ControlPath directory shared by this command's processes (created here if needed)."""
    global _control_created
    with _control_lock:
        existing = os.environ.get(CONTROL_DIR_ENV)
        if existing:
            return existing if os.path.isdir(existing) else None
        base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
        if len(base) > 40:  # ControlPath is a unix socket: 108 bytes at most, ssh adds 17 while creating it
            base = "/tmp"
        try:
            path = tempfile.mkdtemp(prefix="acgs-ssh-", dir=base)  # 0700: only we can join
        except OSError:
            return None
        _control_created = path
        os.environ[CONTROL_DIR_ENV] = path
        return path


class _NoClose:
    """The stream's one buffered reader, lent to an HTTPResponse that must not close it."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def makefile(self, *_args: Any, **_kwargs: Any) -> _NoClose:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def close(self) -> None:
        pass


class _SSHStream:
    """One ssh process running ``docker system dial-stdio``: one HTTP/1.1 stream, requests pipelined.

    Requests are written as they come (any thread); answers come back in the same order, each read by the
    thread that sent its request. A stream that fails (ssh exits, a read times out mid-answer) is broken for
    every pending request: a half-read pipelined stream cannot be resumed.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.argv = ssh_argv(endpoint)
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built above, no shell
                self.argv,
                stdin=theirs,
                stdout=theirs,
                stderr=subprocess.PIPE,
                start_new_session=True,  # ^C reaches us, not ssh; we end it by closing its stdin
            )
        except FileNotFoundError:
            ours.close()
            raise EngineConnectError(
                f"{endpoint.url}: the ssh client is not installed (apt-get install openssh-client)"
            ) from None
        finally:
            theirs.close()
        self.sock = ours
        self._reader = ours.makefile("rb")
        self._stderr: collections.deque[str] = collections.deque(maxlen=_SSH_MAX_STDERR_LINES)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        self._send_lock = threading.Lock()
        self._turn = threading.Condition()
        self._next = 0
        self._serving = 0
        self.broken: BaseException | None = None

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self._stderr.append(line)

    def request(
        self, method: str, target: str, body: bytes | None, timeout: float
    ) -> tuple[int, str, dict[str, str], bytes]:
        """Send one request and return (status, reason, headers, body); raise on a broken stream."""
        head = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: acgs-remediate"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        elif method in ("POST", "PUT"):
            head.append("Content-Length: 0")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        with self._send_lock:
            if self.broken is not None:
                raise self.broken
            ticket = self._next
            self._next += 1
            try:
                # Requests are small and the socket pair's buffer large: sendall does not wait, so it leaves
                # the timeout to the reading thread (the answer in progress may be a long /system/df).
                self.sock.sendall(data)
            except OSError as exc:
                self._break(exc)
        with self._turn:
            while self._serving != ticket and self.broken is None:
                self._turn.wait()
        try:
            if self.broken is not None:
                raise self.broken
            try:
                self.sock.settimeout(timeout)
                resp = http.client.HTTPResponse(_NoClose(self._reader), method=method)  # type: ignore[arg-type]
                resp.begin()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._break(exc)
                raise AssertionError("unreachable") from None  # _break raises
            if resp.will_close:
                self._break(EngineConnectError(f"{self.endpoint.url}: the engine closed the ssh stream"), quiet=True)
            return resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, payload
        finally:
            with self._turn:
                self._serving += 1
                self._turn.notify_all()

    def _break(self, exc: BaseException, quiet: bool = False) -> None:
        """Mark the stream broken by ``exc`` (explained in one line), close it, and raise (unless quiet)."""
        if self.broken is None:
            if isinstance(exc, TimeoutError):
                self.broken = exc
            else:
                self.broken = EngineConnectError(self.explain(exc))
            self.close()
        with self._turn:
            self._turn.notify_all()
        if not quiet:
            raise self.broken

    def explain(self, exc: BaseException | None = None) -> str:
        """Return one line: why this ssh stream failed and what to check."""
        try:
            code = self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            self._drain.join(timeout=1)  # ssh's last words (its reason) may still be in the pipe
        lines = [ln for ln in self._stderr if not ln.startswith(("Warning: Permanently added", "Shared connection"))]
        return explain_ssh_failure(self.endpoint.url, code, lines, exc)

    def close(self) -> None:
        """End the stream: ssh sees its stdin close and exits (the remote dial-stdio with it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def explain_ssh_failure(url: str, code: int | None, stderr: list[str], exc: BaseException | None = None) -> str:
    """Return one line for an ssh:// stream that failed: ssh's reason (if any) and what to check."""
    text = " ".join(stderr)
    last = stderr[-1] if stderr else ""
    last = re.sub(r"^ssh: ", "", last)
    if re.search(r"Could not resolve hostname", text):
        what, check = last, "the host name or the Host alias in your ssh config (~/.ssh/config or docker_ssh_config)"
    elif re.search(r"Connection refused|Connection timed out|No route to host|Network is unreachable", text):
        what, check = last, "the host and port (Port in your ssh config, or ssh://host:port) and that sshd runs there"
    elif "Permission denied" in text:
        what = last
        check = "the user and key (User/IdentityFile in your ssh config, or ssh-agent): `ssh HOST` must log in"
    elif "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        what, check = "host key verification failed", "known_hosts: connect once with `ssh HOST` to accept the host key"
    elif code == 127 or re.search(r"docker: (command )?not found|No such file or directory", text):
        what = "the docker CLI was not found on the remote host"
        check = "that `docker` (18.09 or later) is on the remote user's PATH"
    elif re.search(r"Cannot connect to the Docker daemon|permission denied while trying to connect", text):
        what, check = last, "that the engine runs on the remote host and the ssh user may use its socket (docker group)"
    elif "unknown command" in text or "dial-stdio" in text:
        what, check = last, "the remote docker CLI: `docker system dial-stdio` needs docker 18.09 or later"
    elif last:
        what, check = last, "the host, port and key in your ssh config and the docker CLI on the remote host"
    elif isinstance(exc, TimeoutError):
        what, check = "no answer", "that the host is up; the engine behind it may be frozen"
    else:
        what = f"ssh exited with code {code}" if code is not None else "the stream closed"
        check = "the host, port and key in your ssh config and the docker CLI on the remote host"
    return f"ssh: {what.rstrip('.')}; check {check}"


class _SSHHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over its own ``ssh HOST docker system dial-stdio`` (for calls whose bodies stream).

    Under a command's ControlPath it is one more channel of the host's ssh connection, not another login.
    """

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.endpoint = endpoint
        self.proc: subprocess.Popen[bytes] | None = None

    def connect(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built by ssh_argv, no shell
                ssh_argv(self.endpoint),
                stdin=theirs,
                stdout=theirs,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except FileNotFoundError:
            ours.close()
            raise EngineConnectError(f"{self.endpoint.url}: the ssh client is not installed") from None
        finally:
            theirs.close()
        ours.settimeout(self.timeout)
        self.sock = ours

    def close(self) -> None:
        super().close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


_streams: dict[Endpoint, _SSHStream] = {}
_streams_lock = threading.Lock()


def _stream_for(endpoint: Endpoint, fresh: bool = False) -> tuple[_SSHStream, bool]:
    """Return this process's ssh stream to ``endpoint`` (opened now if needed) and whether it is new."""
    with _streams_lock:
        stream = _streams.get(endpoint)
        if stream is not None and stream.broken is None and not fresh:
            return stream, False
        stream = _SSHStream(endpoint)
        _streams[endpoint] = stream
        return stream, True


def close_all() -> None:
    """Close every ssh stream of this process (at exit; ssh and the remote dial-stdio end with them)."""
    with _streams_lock:
        streams = list(_streams.values())
        _streams.clear()
    for stream in streams:
        stream.close()
    if _control_created:
        shutil.rmtree(_control_created, ignore_errors=True)
        if os.environ.get(CONTROL_DIR_ENV) == _control_created:
            del os.environ[CONTROL_DIR_ENV]


atexit.register(close_all)


# ---- the client


class EngineAPI:
    """The Engine API calls the project makes, over any endpoint; answers are the engine's JSON.

    Why not the docker SDK: a cold analyze makes ~90 GETs per host and the SDK (requests) spends ~0.7 ms of
    CPU on each against ~0.13 ms for http.client; its ssh:// needs paramiko or one ssh process per
    connection. Method names and answers mirror docker.APIClient's. ``timeout`` (seconds, per call) may be
    raised by the caller for calls that grow with the host's size.
    Raises EngineConnectError (one line), TimeoutError, EngineHTTPError / EngineNotFound.
    """

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.api_version = ""  # from the first answer's Api-Version header
        self._prefix = ""
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._contact = threading.Lock()
        self._contacted = False
        self._ssh = endpoint.scheme == "ssh"
        if endpoint.scheme == "unix":
            path = endpoint.url.split("://", 1)[1]
            self._factory = lambda: _UnixHTTPConnection(path, self.timeout, endpoint.connect_timeout)
        elif endpoint.scheme in ("tcp", "http", "https"):
            host, port = _tcp_address(endpoint)
            if endpoint.uses_tls:
                ctx = tls_context(endpoint)
                self._factory = lambda: _TLSConnection(host, port, self.timeout, endpoint.connect_timeout, ctx)
            else:
                self._factory = lambda: _TCPConnection(host, port, self.timeout, endpoint.connect_timeout)
        elif not self._ssh:
            raise EngineConnectError(f"{endpoint.url}: unsupported endpoint (use unix://, tcp:// or ssh://)")

    # -- transport

    def _first_contact(self) -> None:
        """GET /_ping within the connect timeout (once per client); learn the API version from its headers."""
        with self._contact:
            if self._contacted:
                return
            saved = self.timeout
            self.timeout = min(saved, self.endpoint.connect_timeout)
            try:
                self._raw("GET", "/_ping", None, first=True)
            except TimeoutError:
                raise EngineConnectError(
                    f"no answer within {self.endpoint.connect_timeout:g} s (docker_connect_timeout); "
                    "check that the engine runs and is not frozen"
                ) from None
            except EngineConnectError:
                raise
            except OSError as exc:
                raise EngineConnectError(self._explain_os_error(exc)) from None
            finally:
                self.timeout = saved
            self._contacted = True

    def _explain_os_error(self, exc: OSError) -> str:
        """Return one line for a socket that could not be opened: the reason and what to check."""
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno is not None else str(exc)
        if self.endpoint.scheme == "unix":
            return f"cannot connect: {reason}; check the socket path in docker_host and that dockerd runs"
        return (
            f"cannot connect: {reason}; check the host and port in docker_host and that dockerd listens there "
            "(dockerd -H tcp://ADDRESS:PORT)"
        )

    def _raw(
        self, method: str, path: str, body: bytes | None, first: bool = False
    ) -> tuple[int, str, dict[str, str], bytes]:
        target = path if first else f"{self._prefix}{path}"
        try:
            if self._ssh:
                result = self._ssh_request(method, target, body)
            else:
                result = self._pooled(method, target, body)
        except ssl.SSLError as exc:
            raise EngineConnectError(describe_tls(exc, self.endpoint)) from None
        except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
            if self.endpoint.uses_tls and not self._contacted:
                # TLS 1.3 sends the server's refusal of our (missing) client certificate after the handshake.
                raise EngineConnectError(describe_tls(exc, self.endpoint)) from None
            raise
        status, _reason, headers, payload = result
        if first and status == 400 and b"HTTPS" in payload:
            raise EngineConnectError(
                "the engine speaks TLS on this port; set docker_tls (or docker_validate_certs) for this host"
            )
        if not self.api_version and headers.get("api-version"):
            self.api_version = headers["api-version"]
            self._prefix = f"/v{self.api_version}"
        return result

    def _ssh_request(self, method: str, target: str, body: bytes | None) -> tuple[int, str, dict[str, str], bytes]:
        stream, new = _stream_for(self.endpoint)
        try:
            return stream.request(method, target, body, self.timeout)
        except EngineConnectError:
            if new or method != "GET":
                raise
            # A stream this process opened earlier (an earlier step of the command) has ended meanwhile:
            # a GET is safe to send again, on a new one.
            stream, _ = _stream_for(self.endpoint, fresh=True)
            return stream.request(method, target, body, self.timeout)

    def _pooled(self, method: str, target: str, body: bytes | None) -> tuple[int, str, dict[str, str], bytes]:
        with self._lock:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._factory()
        try:
            resp, payload = self._send(conn, method, target, body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if not reused or method != "GET":
                raise
            # A kept-alive connection the engine had closed: a GET is safe to send again, on a new one.
            conn = self._factory()
            try:
                resp, payload = self._send(conn, method, target, body)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, payload

    def _send(
        self, conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn.timeout = self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
        headers = {"Host": "docker"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp, resp.read()

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        """Return the engine's decoded answer to one call; raise EngineHTTPError/EngineNotFound on >= 400."""
        if not self._contacted:
            self._first_contact()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        data = json.dumps(body).encode() if body is not None else None
        status, reason, _headers, payload = self._raw(method, f"{path}{query}", data)
        if status >= 400:
            try:
                message = str(json.loads(payload).get("message") or "")
            except (ValueError, AttributeError):
                message = payload.decode(errors="replace").strip()
            raise (EngineNotFound if status == 404 else EngineHTTPError)(status, message or reason)
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode(errors="replace")

    def close(self) -> None:
        """Close this client's kept-alive connections (ssh streams stay for the process's other calls)."""
        with self._lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()

    # -- the calls (docker.APIClient's names and answers)

    def ping(self) -> None:
        """Make first contact now (raises EngineConnectError when the engine cannot be reached)."""
        self._first_contact()

    def version(self) -> dict[str, Any]:
        """Return the engine's API version, as /version names it (known from first contact: no request)."""
        self._first_contact()
        if self.api_version:
            return {"ApiVersion": self.api_version}
        return self.call("GET", "/version")

    def info(self) -> dict[str, Any]:
        """GET /info."""
        return self.call("GET", "/info")

    def images(  # noqa: A002 - the SDK's names
        self, name: str | None = None, quiet: bool = False, all: bool = False, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """GET /images/json (intermediate images too with ``all``; by reference ``name``; ``filters``)."""
        params = {"only_ids": "0", "all": "1" if all else "0"}
        if filters:
            params["filters"] = json.dumps({k: v if isinstance(v, list) else [v] for k, v in filters.items()})
        if name:
            params["filter"] = name
        return self.call("GET", "/images/json", params) or []

    def df(self) -> dict[str, Any]:
        """GET /system/df."""
        return self.call("GET", "/system/df")

    def containers(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - the SDK's name
        """GET /containers/json (stopped ones too with ``all``)."""
        return self.call("GET", "/containers/json", {"all": "1" if all else "0", "size": "0"}) or []

    def inspect_container(self, ident: str) -> dict[str, Any]:
        """GET /containers/{id}/json."""
        return self.call("GET", f"/containers/{urllib.parse.quote(ident)}/json")

    def inspect_image(self, ident: str) -> dict[str, Any]:
        """GET /images/{ref}/json."""
        return self.call("GET", f"/images/{urllib.parse.quote(ident, safe='/:@')}/json")

    def history(self, ident: str) -> list[dict[str, Any]]:
        """GET /images/{ref}/history."""
        return self.call("GET", f"/images/{urllib.parse.quote(ident, safe='/:@')}/history")

    # -- Image transfer and tagging (phase 2 ships built images; acgs_remediate.builds), docker.APIClient's
    # names and answers. Each uses its own connection (over ssh: its own channel): their bodies stream.

    def _stream(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: Iterable[bytes] | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request on a new connection; return it and its (unread) response. Raise EngineHTTPError."""
        if not self._contacted:
            self._first_contact()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        conn: http.client.HTTPConnection = (
            _SSHHTTPConnection(self.endpoint, self.timeout) if self._ssh else self._factory()
        )
        conn.timeout = self.timeout
        try:
            # An iterable body without a length goes out chunked (http.client): nothing is buffered whole.
            conn.request(
                method, f"{self._prefix}{path}{query}", body=body, headers={"Host": "docker", **(headers or {})}
            )
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            try:
                message = str(json.loads(raw).get("message") or "")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace").strip()
            raise (EngineNotFound if resp.status == 404 else EngineHTTPError)(resp.status, message or resp.reason)
        return conn, resp

    @staticmethod
    def _json_lines(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> Iterator[Any]:
        """Yield the decoded JSON messages of a progress stream (push, pull, load), then close."""
        try:
            buffer = b""
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)
        finally:
            conn.close()

    def tag(self, image: str, repository: str, tag: str | None = None, force: bool = False) -> bool:
        """POST /images/{image}/tag; return whether the engine made the tag."""
        params = {"repo": repository, "tag": tag or "latest"}
        conn, resp = self._stream("POST", f"/images/{urllib.parse.quote(image, safe='/:@')}/tag", params)
        resp.read()
        conn.close()
        return resp.status == 201

    def push(
        self,
        repository: str,
        tag: str | None = None,
        stream: bool = False,
        auth_config: Any = None,
        decode: bool = False,
    ) -> Iterator[Any]:
        """POST /images/{name}/push; yield its progress messages."""
        # The engine wants an X-Registry-Auth header even for a registry without auth.
        headers = {"X-Registry-Auth": "e30="}  # base64("{}")
        conn, resp = self._stream(
            "POST",
            f"/images/{urllib.parse.quote(repository, safe='/:@')}/push",
            {"tag": tag or "latest"},
            headers=headers,
        )
        return self._json_lines(conn, resp)

    def pull(
        self,
        repository: str,
        tag: str | None = None,
        stream: bool = False,
        auth_config: Any = None,
        decode: bool = False,
    ) -> Iterator[Any]:
        """POST /images/create (a pull); yield its progress messages."""
        if tag is None and "@" in repository:
            repository, tag = repository.split("@", 1)
        headers = {"X-Registry-Auth": "e30="}
        conn, resp = self._stream(
            "POST", "/images/create", {"fromImage": repository, "tag": tag or "latest"}, headers=headers
        )
        return self._json_lines(conn, resp)

    def get_image(self, image: str, chunk_size: int = 2 * 1024 * 1024) -> Iterator[bytes]:
        """Yield the image's archive (what `docker save` writes) in chunks, straight off the connection."""
        conn, resp = self._stream("GET", f"/images/{urllib.parse.quote(image, safe='/:@')}/get")

        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    chunk = resp.read(chunk_size)
                    if not chunk:
                        return
                    yield chunk
            finally:
                conn.close()

        return chunks()

    def load_image(self, data: Iterable[bytes] | bytes, quiet: bool | None = None) -> Iterator[Any]:
        """Send an image archive to POST /images/load (chunked when ``data`` is an iterable); yield its messages."""
        params = {"quiet": "1" if quiet else "0"}
        conn, resp = self._stream(
            "POST", "/images/load", params, body=data, headers={"Content-Type": "application/x-tar"}
        )
        return self._json_lines(conn, resp)

    # -- Containers (phase 3 hands a container made outside Compose over to it; acgs_remediate.rollout).

    def stop(self, container: str, timeout: int | None = None) -> None:
        """POST /containers/{id}/stop (the engine waits up to ``timeout`` seconds before killing it)."""
        params = {"t": str(timeout)} if timeout is not None else None
        saved = self.timeout
        self.timeout = saved + (timeout or 10)
        try:
            self.call("POST", f"/containers/{urllib.parse.quote(container)}/stop", params)
        finally:
            self.timeout = saved

    def start(self, container: str) -> None:
        """POST /containers/{id}/start."""
        self.call("POST", f"/containers/{urllib.parse.quote(container)}/start")

    def rename(self, container: str, name: str) -> None:
        """POST /containers/{id}/rename."""
        self.call("POST", f"/containers/{urllib.parse.quote(container)}/rename", {"name": name})

    def remove_container(self, container: str, v: bool = False, link: bool = False, force: bool = False) -> None:
        """DELETE /containers/{id}."""
        params = {"v": "1" if v else "0", "force": "1" if force else "0"}
        self.call("DELETE", f"/containers/{urllib.parse.quote(container)}", params)

    def stats(self, container: str) -> dict[str, Any]:
        """GET /containers/{id}/stats?stream=false: one sample of the container's memory, CPU, network, I/O.

        The engine answers after its next collection (~1 s: it waits so that ``precpu_stats`` holds the sample
        before, which a CPU percentage needs), so the call takes its own connection (over ssh: its own channel
        of the host's connection) and never holds up other calls on the pipelined stream. Raises
        EngineNotFound when the container is gone, EngineHTTPError otherwise.
        """
        conn, resp = self._stream("GET", f"/containers/{urllib.parse.quote(container)}/stats", {"stream": "false"})
        try:
            payload = resp.read()
        finally:
            conn.close()
        return json.loads(payload) if payload.strip() else {}

    def events(self, since: float, until: float, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """Return the engine's events between ``since`` and ``until`` (Unix seconds), oldest first.

        With ``until`` set the engine answers the bounded window and ends the stream (newline-separated JSON).
        """
        if not self._contacted:
            self._first_contact()
        params = {"since": f"{since:.9f}", "until": f"{until:.9f}"}
        if filters:
            params["filters"] = json.dumps(filters)
        status, reason, _headers, payload = self._raw("GET", f"/events?{urllib.parse.urlencode(params)}", None)
        if status >= 400:
            raise EngineHTTPError(status, payload.decode(errors="replace").strip() or reason)
        decoder = json.JSONDecoder()
        text, pos, out = payload.decode(errors="replace"), 0, []
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            item, pos = decoder.raw_decode(text, pos)
            out.append(item)
        return out

    def inspect_distribution(self, ref: str) -> dict[str, Any]:
        """GET /distribution/{ref}/json: the registry's descriptor of ``ref``, asked by the engine."""
        return self.call("GET", f"/distribution/{urllib.parse.quote(ref, safe='/:@')}/json")

    def remove_image(self, ref: str, force: bool = False, noprune: bool = False) -> Any:
        """DELETE /images/{ref} (one image or tag)."""
        params = {"force": "1" if force else "0", "noprune": "1" if noprune else "0"}
        return self.call("DELETE", f"/images/{urllib.parse.quote(ref, safe='/:@')}", params)

    def prune_builds(self, keep_storage: int | None = None, all: bool = False) -> Any:  # noqa: A002
        """POST /build/prune (down to ``keep_storage`` bytes)."""
        params: dict[str, Any] = {}
        if keep_storage is not None:
            params["keep-storage"] = keep_storage
        if all:
            params["all"] = "1"
        return self.call("POST", "/build/prune", params)


def describe_tls(exc: BaseException, endpoint: Endpoint) -> str:
    """Return one line for a failed TLS handshake with ``endpoint``: what failed and which variable to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc.reason or exc)
        if "hostname" in reason.lower() or "IP address mismatch" in reason:
            return f"TLS: the engine's certificate does not name this host ({reason}); check docker_host"
        return (
            f"TLS: the engine's certificate is not trusted ({reason}); check that docker_ca_path "
            f"({endpoint.ca_path or 'unset: system CAs'}) is the CA that signed it"
        )
    reason = str(getattr(exc, "reason", "") or "").upper()
    if isinstance(exc, ConnectionError) or any(
        key in reason for key in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE")
    ):
        given = "none was given" if not endpoint.client_cert else f"{endpoint.client_cert} was not accepted"
        return (
            f"TLS: the engine refused our client certificate ({given}); check docker_client_cert and "
            "docker_client_key (a certificate signed by the CA the engine trusts)"
        )
    if "WRONG_VERSION_NUMBER" in reason:
        return "TLS: the engine does not speak TLS on this port; unset docker_tls/docker_validate_certs or fix the port"
    return f"TLS: {str(getattr(exc, 'reason', '') or exc).replace('_', ' ').lower()}; check the docker_tls variables"


def describe_failure(exc: BaseException) -> str:
    """Return a one-line reason for a failure talking to an engine through this client (no traceback)."""
    if isinstance(exc, EngineConnectError):
        return str(exc)
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "timed out waiting for the engine"
    if isinstance(exc, EngineHTTPError):
        return f"engine error {exc.status_code}: {exc.explanation}"
    if isinstance(exc, ssl.SSLError):
        return f"cannot connect: TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"cannot connect: [Errno {exc.errno}] {exc.strerror}"
    if isinstance(exc, http.client.HTTPException):
        return f"cannot talk to the engine: {type(exc).__name__}: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
