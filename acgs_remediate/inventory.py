"""The fleet as Ansible sees it: hosts, their Docker endpoints and their policy.

Uses ansible's own inventory loader (any format ansible reads: YAML, INI, directories with
group_vars/host_vars, plugins), never a hand parse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import POLICY_VAR, Policy, parse_policy
from .errors import UsageError
from .resources import cache_dir

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
INVENTORY_ENV = "ACGS_REMEDIATE_INVENTORY"

# The inventory cache. Bump _CACHE_FORMAT when the cached document or what load_fleet derives changes.
_CACHE_FORMAT = 1
_CACHE_MAX_ENTRIES = 64
_CACHE_MAX_BYTES = 5 * 1024 * 1024
_CACHE_MAX_FILES = 2000
# Settings that enable plugins which may read state outside the inventory files, or that move where
# auto-loaded vars plugins are found, or that make facts from a persistent cache part of the host vars.
_DYNAMIC_ENV = (
    "ANSIBLE_VARS_ENABLED",
    "ANSIBLE_INVENTORY_ENABLED",
    "ANSIBLE_VARS_PLUGINS",
    "ANSIBLE_INVENTORY_PLUGINS",
    "ANSIBLE_CACHE_PLUGIN",
)
_DYNAMIC_CONFIG_RE = re.compile(
    rb"^[ \t]*(vars_plugins_enabled|vars_plugins|enable_plugins|inventory_plugins|fact_caching|home)[ \t]*[=:]",
    re.IGNORECASE | re.MULTILINE,
)
# A `plugin:` key (YAML, flow style or JSON, quoted or not) marks an inventory plugin configuration
# (aws_ec2, constructed, ...): its hosts come from outside the file. Matches anywhere: false hits only cost speed.
_PLUGIN_KEY_RE = re.compile(rb"""(?<![\w-])["']?plugin["']?[ \t]*:""")
_VAULT_MARK = b"$ANSIBLE_VAULT"
# Vars plugins shipped with ansible; any other file there is loaded automatically and may read anything.
_BUILTIN_VARS_PLUGINS = {"__init__.py", "__pycache__", "host_group_vars.py"}


@dataclass(frozen=True)
class Host:
    """One inventory host: a Docker Engine endpoint plus the variables Ansible gives it."""

    name: str
    docker_host: str = DEFAULT_DOCKER_HOST
    tls: bool = False
    validate_certs: bool = False
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 60.0
    # ssh:// only: an ssh config file (ssh -F) instead of ssh's own (~/.ssh/config), and seconds allowed for
    # first contact with the engine (ssh login or TCP connect, TLS, /_ping) before the host is unreachable.
    ssh_config: str | None = None
    connect_timeout: float = 10.0
    groups: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def docker_client_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for ``docker.DockerClient`` reaching this host."""
        kwargs: dict[str, Any] = {"base_url": self.docker_host, "timeout": self.timeout}
        if self.docker_host.startswith("ssh://"):
            kwargs["use_ssh_client"] = True
        if self.tls or self.validate_certs:
            from docker.tls import TLSConfig

            cert = (self.client_cert, self.client_key) if self.client_cert and self.client_key else None
            kwargs["tls"] = TLSConfig(client_cert=cert, ca_cert=self.ca_path, verify=self.validate_certs)
        return kwargs


@dataclass
class Fleet:
    """A loaded inventory: the hosts a pattern selects, with their policies."""

    source: Path
    hosts: list[Host]
    _policy_sources: dict[str, str] = field(default_factory=dict, repr=False)

    def policy(self, host: Host) -> Policy:
        """Return the validated policy of ``host``; raise UsageError naming the file that holds it."""
        return parse_policy(host.vars.get(POLICY_VAR), self._policy_sources.get(host.name, str(self.source)))

    def host(self, name: str) -> Host:
        """Return the host called ``name``."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


def resolve_inventory(path: str | os.PathLike[str] | None) -> Path:
    """Return the inventory to use: ``path``, else $ACGS_REMEDIATE_INVENTORY, else the running sandbox's."""
    if path is None:
        path = os.environ.get(INVENTORY_ENV) or None
    if path is None:
        from .sandbox_paths import default_sandbox_inventory

        candidate = default_sandbox_inventory()
        if candidate.is_file():
            return candidate
        raise UsageError(
            "no inventory given",
            hint=f"pass -i PATH (an Ansible inventory), set {INVENTORY_ENV}, or start one with "
            "'acgs-remediate sandbox up'",
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"inventory {p} does not exist", hint="pass -i with the path of an Ansible inventory")
    return p.resolve()


def load_fleet(path: str | os.PathLike[str] | None, pattern: str = "all") -> Fleet:
    """Return the hosts of the inventory at ``path`` that match the Ansible host ``pattern``.

    Ansible stays the source of truth; a content-keyed cache (see ``_InventoryCache``) only spares
    importing it (~0.3 s per command) when every input ansible would read is byte-for-byte unchanged.
    """
    source = resolve_inventory(path)
    # Make ansible fail loudly on a source it cannot parse instead of warning and going on empty.
    # Set before the cache key is computed: these are ANSIBLE_ variables, which the key covers.
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")
    os.environ.setdefault("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
    cache = _InventoryCache.for_inventory(source, pattern)
    if cache is not None:
        cached = cache.load()
        if cached is not None:
            return cached
    # ansible reads its configuration once, at import, and its host_group_vars plugin remembers which vars
    # files it found for the life of the process: only a load that imported ansible itself is known to reflect
    # the inputs the key was computed from. Later loads in the same process may use the cache, never fill it.
    fresh_ansible = "ansible" not in sys.modules
    fleet, plain = _load_with_ansible(source, pattern)
    if cache is not None and plain and fresh_ansible and cache.still_current(pattern):
        cache.save(fleet)
    return fleet


def _load_with_ansible(source: Path, pattern: str) -> tuple[Fleet, bool]:
    """Load the fleet with ansible's InventoryManager/VariableManager.

    Also return whether every host's variables are plain JSON (and so may be cached exactly).
    """
    from ansible import constants as C
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.utils.display import Display
    from ansible.vars.manager import VariableManager

    C.INVENTORY_UNPARSED_IS_FAILED = True
    C.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    Display().verbosity = 0
    loader = DataLoader()
    try:
        with _quiet_ansible_warnings():
            inventory = InventoryManager(loader=loader, sources=[str(source)])
            variables = VariableManager(loader=loader, inventory=inventory)
    except AnsibleError:
        raise UsageError(
            f"cannot read inventory {source}: {_syntax_problem(source)}",
            hint="fix the syntax (YAML or INI) and retry",
        ) from None
    if not inventory.hosts:
        raise UsageError(f"inventory {source} defines no hosts", hint="add hosts, or pass another -i PATH")
    try:
        # ansible warns on stderr about an unmatched pattern; we raise our own clear error instead.
        with _quiet_ansible_warnings():
            selected = inventory.get_hosts(pattern or "all")
    except AnsibleError as err:
        raise UsageError(
            f"bad host pattern {pattern!r}: {err}",
            hint="use an Ansible pattern such as prod, 'web*' or 'prod:!h3'",
        ) from None
    if not selected:
        groups = ", ".join(sorted(g for g in inventory.groups if g not in ("all", "ungrouped")))
        raise UsageError(
            f"host pattern {pattern!r} matches no host in {source}",
            hint=f"groups there: {groups or '(none)'}; patterns work as with ansible --limit",
        )
    hosts: list[Host] = []
    sources: dict[str, str] = {}
    all_plain = True
    for ah in selected:
        name = str.__str__(ah.name)
        hv = variables.get_vars(host=ah, include_hostvars=False)
        hv = {
            k: v for k, v in hv.items() if not k.startswith("ansible_") or k in ("ansible_host", "ansible_connection")
        }
        # ansible hands out its own str/int/dict subclasses (data tags, unsafe text); plain values make the
        # Fleet the same whether it came from ansible or from the cache. Anything else stays as ansible made it.
        plain = _plain_json(hv)
        if plain is _NOT_JSON:
            all_plain = False
        else:
            hv = plain
        groups = tuple(sorted(str.__str__(g.name) for g in ah.get_groups()))
        hosts.append(_host_from_vars(name, hv, groups))
        sources[name] = _policy_source(source, ah)
    return Fleet(source=source, hosts=hosts, _policy_sources=sources), all_plain


@contextlib.contextmanager
def _quiet_ansible_warnings() -> Iterator[None]:
    from ansible.utils.display import Display

    display = Display()
    names = ("warning", "error_as_warning")
    originals = {name: getattr(display, name) for name in names}
    for name in names:
        setattr(display, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(display, name, fn)


def _syntax_problem(source: Path) -> str:
    """Return where a YAML inventory file is malformed, in one line (ansible's own message is many)."""
    import yaml  # only on this error path: a command whose inventory loads never pays for it

    files = [source] if source.is_file() else sorted(source.rglob("*.y*ml"))
    for f in files:
        try:
            yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{f}:{mark.line + 1}:{mark.column + 1}" if mark else str(f)
            return f"{exc.problem or 'YAML error'} at {where}"
        except (OSError, yaml.YAMLError) as exc:
            return f"{f}: {exc}"
    return "no inventory plugin could parse it"


def _host_from_vars(name: str, hv: dict[str, Any], groups: tuple[str, ...]) -> Host:
    def opt(key: str) -> str | None:
        value = hv.get(key)
        return str(value) if value not in (None, "") else None

    def seconds(key: str, default: float) -> float:
        try:
            value = float(hv.get(key, default))
        except (TypeError, ValueError):
            value = -1.0
        if not value > 0:
            raise UsageError(f"host {name}: {key} must be a positive number of seconds, not {hv.get(key)!r}")
        return value

    timeout = seconds("docker_timeout", 60)
    connect_timeout = seconds("docker_connect_timeout", 10)
    docker_host = str(hv.get("docker_host") or DEFAULT_DOCKER_HOST)
    if not docker_host.startswith(("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")):
        raise UsageError(
            f"host {name}: docker_host {docker_host!r} is not a Docker endpoint",
            hint="write it as unix:///var/run/docker.sock, ssh://user@host or tcp://host:2376",
        )
    return Host(
        name=name,
        docker_host=docker_host,
        tls=_truthy(hv.get("docker_tls", False)),
        validate_certs=_truthy(hv.get("docker_validate_certs", False)),
        ca_path=opt("docker_ca_path"),
        client_cert=opt("docker_client_cert"),
        client_key=opt("docker_client_key"),
        timeout=timeout,
        ssh_config=os.path.expanduser(opt("docker_ssh_config") or "") or None,
        connect_timeout=connect_timeout,
        groups=groups,
        vars=dict(hv),
    )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _policy_source(source: Path, ansible_host: Any) -> str:
    """Return the file that most specifically defines the policy for this host (for error messages)."""
    base = source if source.is_dir() else source.parent
    candidates = [("host_vars", ansible_host.name)]
    # Most specific group first (ansible merges by depth), all last.
    for group in sorted(ansible_host.get_groups(), key=lambda g: -g.depth):
        candidates.append(("group_vars", group.name))
    for kind, name in candidates:
        for suffix in ("", ".yml", ".yaml", ".json"):
            p = base / kind / f"{name}{suffix}"
            files = sorted(p.glob("*.y*ml")) if p.is_dir() else ([p] if p.is_file() else [])
            for f in files:
                try:
                    if POLICY_VAR in f.read_text(encoding="utf-8", errors="replace"):
                        return str(f)
                except OSError:
                    continue
    return str(source)


def policy_for(fleet: Fleet, host: Host) -> Policy:
    """Return the validated policy for ``host`` (shorthand for ``fleet.policy(host)``)."""
    return fleet.policy(host)


# ---------------------------------------------------------------------------------------------------
# Inventory cache: the Fleet of an earlier load, reused only when every input ansible reads is unchanged.


_NOT_JSON = object()


def _plain_json(value: Any) -> Any:
    """Return ``value`` rebuilt from exact JSON types, or ``_NOT_JSON`` if a JSON round trip would change it.

    ansible's own subclasses of str/int/float/dict/list (data tags, unsafe text) become the plain type; anything
    else that JSON cannot carry exactly (dates, tuples, bytes, sets, NaN, non-str keys, foreign subclasses) makes
    the whole value uncacheable, so a cached Fleet can never differ from ansible's.
    """
    try:
        return _plain(value)
    except RecursionError:
        return _NOT_JSON


def _ours_or_ansibles(kind: type) -> bool:
    return kind in (str, int, float, dict, list) or kind.__module__.startswith("ansible.")


def _plain(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if not _ours_or_ansibles(kind):
        return _NOT_JSON
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else _NOT_JSON
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            plain = _plain(item)
            if plain is _NOT_JSON or not isinstance(key, str) or not _ours_or_ansibles(type(key)):
                return _NOT_JSON
            out[str.__str__(key)] = plain
        return out
    if isinstance(value, list):
        items = [_plain(item) for item in value]
        return _NOT_JSON if any(item is _NOT_JSON for item in items) else items
    return _NOT_JSON  # ansible's tuples, dates, bytes...


def _inventory_cache_dir() -> Path | None:
    """Return the inventory cache directory, beside the layer cache, or None when caching is off."""
    return cache_dir("inventory")


def _walk_files(root: Path) -> Iterator[Path]:
    """Yield every file under ``root`` (following symlinks, once per real directory), in a stable order.

    An unreadable directory raises: the cache must not be keyed on a partial view of the inputs.
    """
    if not os.path.isdir(root):
        if os.path.lexists(root):
            yield root
        return
    seen: set[str] = set()

    def fail(err: OSError) -> None:
        raise err

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath, name)


def _inventory_inputs(source: Path) -> Iterator[tuple[Path, bool]]:
    """Yield the files ansible may read for ``source``, each with whether it is an inventory (not a vars) file.

    A file source: itself plus its sibling group_vars/ and host_vars/. A directory: everything under it. Also the
    group_vars/ and host_vars/ of the current directory: without a playbook, ansible's loader basedir is ".", and
    its host_group_vars plugin reads them too.
    """
    done: set[Path] = set()
    candidates: list[tuple[Path, Path | None]] = []  # (root, base for inventory/vars classification)
    if source.is_dir():
        candidates.append((source, source))
    else:
        candidates += [(source, None), (source.parent / "group_vars", None), (source.parent / "host_vars", None)]
    cwd = Path.cwd()
    candidates += [(cwd / "group_vars", None), (cwd / "host_vars", None)]
    for root, base in candidates:
        for path in _walk_files(root):
            if path in done:
                continue
            done.add(path)
            if base is not None:
                is_inventory = not {"group_vars", "host_vars"} & set(path.relative_to(base).parts[:-1])
            else:
                is_inventory = path == source
            yield path, is_inventory


def _config_candidates() -> list[Path]:
    """Return every ansible.cfg that could be in effect, in ansible's order of precedence."""
    paths: list[Path] = []
    from_env = os.environ.get("ANSIBLE_CONFIG")
    if from_env is not None:
        env_path = Path(os.path.abspath(os.path.expandvars(os.path.expanduser(from_env))))
        paths.append(env_path / "ansible.cfg" if env_path.is_dir() else env_path)
    paths += [Path.cwd() / "ansible.cfg", Path("~/.ansible.cfg").expanduser(), Path("/etc/ansible/ansible.cfg")]
    return paths


def _ansible_install_state() -> str | None:
    """Return where ansible is installed and when, without importing it; None if it has extra vars plugins."""
    import importlib.util

    spec = importlib.util.find_spec("ansible")
    if spec is None:
        return "no ansible"
    if spec.origin:
        base = Path(spec.origin).parent
    else:
        base = Path(next(iter(spec.submodule_search_locations or ["."])))
    release = base / "release.py"
    st = release.stat()
    with contextlib.suppress(FileNotFoundError):
        if set(os.listdir(base / "plugins" / "vars")) - _BUILTIN_VARS_PLUGINS:
            return None
    return f"{release}\0{st.st_mtime_ns}\0{st.st_size}"


def _cache_key(source: Path, pattern: str) -> str | None:
    """Return the sha256 of everything that decides what ansible loads, or None when it must not be cached.

    Not cached: dynamic inventories (executable files, ``plugin:`` configurations), vaulted content (no secrets
    in clear on disk), settings that enable plugins that may read external state, auto-loaded third-party vars
    plugins, and inventories too large to be worth hashing on every start.
    """
    env = {name: value for name, value in os.environ.items() if name.startswith("ANSIBLE_")}
    if any(name in env for name in _DYNAMIC_ENV):
        return None
    digest = hashlib.sha256()

    def feed(*parts: str | bytes) -> None:
        for part in parts:
            data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)

    installed = _ansible_install_state()
    if installed is None:
        return None
    feed("acgs-remediate inventory cache", str(_CACHE_FORMAT), Path(__file__).read_bytes(), installed)
    feed(sys.executable, str(source), repr(pattern), os.getcwd())
    for name in sorted(env):
        feed("env", name, env[name])
    for config in _config_candidates():
        try:
            content = config.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            feed("config missing", str(config))
            continue
        if _DYNAMIC_CONFIG_RE.search(content):
            return None
        feed("config", str(config), content)
    ansible_home = Path(os.path.expandvars(os.environ.get("ANSIBLE_HOME") or "~/.ansible")).expanduser()
    for plugins in (ansible_home / "plugins" / "vars", Path("/usr/share/ansible/plugins/vars")):
        if plugins.is_dir() and any(plugins.iterdir()):
            return None
    total = count = 0
    for path, is_inventory in _inventory_inputs(source):
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or (is_inventory and st.st_mode & 0o111):
            return None
        data = path.read_bytes()
        total += len(data)
        count += 1
        if total > _CACHE_MAX_BYTES or count > _CACHE_MAX_FILES or _VAULT_MARK in data:
            return None
        if is_inventory and _PLUGIN_KEY_RE.search(data):
            return None
        feed("inventory" if is_inventory else "vars", str(path), data)
    feed("files", str(count))
    return digest.hexdigest()


def _owned_private(st: os.stat_result) -> bool:
    """Whether a cache file is a regular file of ours that nobody else could have written."""
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return stat.S_ISREG(st.st_mode) and mine and not st.st_mode & 0o022


class _InventoryCache:
    """The cache file that holds the Fleet for one exact set of inputs (named by their sha256).

    Only a shortcut: every failure to read or write it (read-only home, corrupt file) falls back to ansible.
    """

    def __init__(self, path: Path, key: str, source: Path) -> None:
        self.path = path
        self.key = key
        self.source = source

    @classmethod
    def for_inventory(cls, source: Path, pattern: str) -> _InventoryCache | None:
        """Return the cache entry for loading ``source`` with ``pattern``, or None when it must not be cached."""
        directory = _inventory_cache_dir()
        if directory is None:
            return None
        try:
            key = _cache_key(source, pattern)
        except (OSError, RuntimeError, ValueError):
            return None  # an input we cannot read or stat: let ansible decide what that means
        return None if key is None else cls(directory / f"{key}.json", key, source)

    def still_current(self, pattern: str) -> bool:
        """Whether the inputs still hash to this key (no file changed while ansible was reading it)."""
        try:
            return _cache_key(self.source, pattern) == self.key
        except (OSError, RuntimeError, ValueError):
            return False

    def load(self) -> Fleet | None:
        """Return the cached Fleet, or None when there is none usable."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with open(fd, "rb") as f:
                if not _owned_private(os.fstat(f.fileno())):
                    return None
                data = json.loads(f.read())
            fleet = self._decode(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, UsageError):
            return None
        if fleet is not None:
            with contextlib.suppress(OSError):
                os.utime(self.path)  # eviction drops the least recently used entries
        return fleet

    def _decode(self, data: Any) -> Fleet | None:
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("key") != self.key:
            return None
        if data.get("source") != str(self.source):
            return None
        hosts: list[Host] = []
        for entry in data["hosts"]:
            name, groups, hv = entry["name"], entry["groups"], entry["vars"]
            if not isinstance(name, str) or not isinstance(hv, dict) or not isinstance(groups, list):
                return None
            if not all(isinstance(g, str) for g in groups):
                return None
            # The same derivation as the ansible path, from the same plain values: the same Host.
            hosts.append(_host_from_vars(name, hv, tuple(groups)))
        sources = data["policy_sources"]
        if not hosts or not isinstance(sources, dict):
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
            return None
        return Fleet(source=self.source, hosts=hosts, _policy_sources=dict(sources))

    def save(self, fleet: Fleet) -> None:
        """Write ``fleet`` atomically (0600 in a 0700 directory) if it reads back identical; errors are ignored."""
        document = {
            "format": _CACHE_FORMAT,
            "key": self.key,
            "source": str(fleet.source),
            "hosts": [{"name": h.name, "groups": list(h.groups), "vars": h.vars} for h in fleet.hosts],
            "policy_sources": fleet._policy_sources,
        }
        try:
            text = json.dumps(document, allow_nan=False)
            again = self._decode(json.loads(text))
        except (TypeError, ValueError, RecursionError, KeyError, UsageError):
            return
        if again is None or not _same_fleet(again, fleet):
            return
        import tempfile

        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _evict(directory)
        except OSError:
            pass  # a read-only or full cache directory must not break a command


def _same_fleet(a: Fleet, b: Fleet) -> bool:
    """Whether two fleets are equal in everything, host vars included (Host equality leaves them out)."""
    return (
        a.source == b.source
        and a.hosts == b.hosts
        and [h.vars for h in a.hosts] == [h.vars for h in b.hosts]
        and a._policy_sources == b._policy_sources
    )


def _evict(directory: Path) -> None:
    """Keep the newest _CACHE_MAX_ENTRIES entries; drop temporary files a killed writer left behind."""
    entries: list[tuple[float, str]] = []
    now = time.time()
    with os.scandir(directory) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                mtime = entry.stat(follow_symlinks=False).st_mtime
                if entry.name.endswith(".json"):
                    entries.append((mtime, entry.path))
                elif entry.name.endswith(".tmp") and now - mtime > 3600:
                    os.unlink(entry.path)
    entries.sort()
    for _, path in entries[: max(0, len(entries) - _CACHE_MAX_ENTRIES)]:
        with contextlib.suppress(OSError):
            os.unlink(path)
