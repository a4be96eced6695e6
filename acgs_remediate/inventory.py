"""The fleet as Ansible sees it: hosts, their Docker endpoints and their policy.

Uses ansible's own inventory loader (any format ansible reads: YAML, INI, directories with
group_vars/host_vars, plugins), never a hand parse.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import POLICY_VAR, Policy, parse_policy
from .errors import UsageError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
INVENTORY_ENV = "ACGS_REMEDIATE_INVENTORY"


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
        raise UsageError(
            f"inventory {p} does not exist", hint="pass -i with the path of an Ansible inventory"
        )
    return p.resolve()


def load_fleet(path: str | os.PathLike[str] | None, pattern: str = "all") -> Fleet:
    """Return the hosts of the inventory at ``path`` that match the Ansible host ``pattern``."""
    source = resolve_inventory(path)
    # Make ansible fail loudly on a source it cannot parse instead of warning and going on empty.
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")
    os.environ.setdefault("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
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
    for ah in selected:
        hv = variables.get_vars(host=ah, include_hostvars=False)
        hv = {
            k: v
            for k, v in hv.items()
            if not k.startswith("ansible_") or k in ("ansible_host", "ansible_connection")
        }
        hosts.append(_host_from_vars(ah.name, hv, tuple(sorted(g.name for g in ah.get_groups()))))
        sources[ah.name] = _policy_source(source, ah)
    return Fleet(source=source, hosts=hosts, _policy_sources=sources)


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

    try:
        timeout = float(hv.get("docker_timeout", 60))
    except (TypeError, ValueError):
        raise UsageError(
            f"host {name}: docker_timeout must be a number of seconds, not {hv.get('docker_timeout')!r}"
        ) from None
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
