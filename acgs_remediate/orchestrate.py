"""One phase flow for every phase: lock -> facts -> plan -> show -> check/confirm -> run -> measure -> ledger.

pyinfra's flow (prepare -> show the changes -> stop if dry-run -> confirm unless ``--yes`` -> execute) and
ansible-runner's split (a small facade, a prepared run, a runner that executes and records), once, for
phase 1, phase 2, phase 3 and hygiene alike. What differs between phases is a :class:`PhaseSpec`:

* its **planner** (``plan_host``: one host's snapshot + policy -> a per-host plan model whose ``for_run()``
  is what the playbook acts on, with ``actions``, ``predicted_bytes`` and ``notes``),
* its **renderer** (``plan_tables``/``plan_markdown`` for the plan, ``outcome`` + ``summary_columns`` for the
  per-host result row and its ledger entry, ``diff_lines`` for ``--diff``),
* its **playbook** (``playbook``, a file under ``playbooks/`` that also runs standalone, and
  ``playbook_vars``: the extravars that carry the plans to it).

Everything else is here and shared: the ledger skip of finished hosts (unless ``force``), retries of
failed/interrupted hosts, per-host locks (two runs at once: the second is refused at once), facts read in
parallel, live per-host progress (through :class:`Interaction`), the playbook run (``execute``), bytes
before/after measured per host, the per-host ledger entry, and saved plans (below). This module prints
nothing and exits nothing: the CLI gives it an :class:`Interaction` and prints what it returns.

Saved plans (``plan PHASE -o FILE``, then ``PHASE --plan FILE``): the file holds each host's plan exactly
as shown plus a :class:`Fingerprint` of the facts the plan depends on (the engine's ID, the host's policy,
and for each image an action touches: its tags and the containers using it). Applying it re-reads the
facts under the host locks and refuses the whole run (exit 2, nothing changed on any host) when one of
those facts changed, one line per change; facts the plan does not depend on (a new unrelated image) do
not matter. What is applied is then the saved plan, action for action — not a new one — so nothing that
drifts with the clock (minimum ages) can slip in between review and run.

How to add a phase (phase 2, phase 3, hygiene): write its planner (pure, in the domain layer, tested from
snapshot case files) returning a pydantic plan model with ``host``, ``actions``, ``predicted_bytes``,
``notes`` and ``for_run()``; write its playbook (roles with check and diff mode; it reads the plans from
the extravars ``playbook_vars`` returns); then subclass :class:`PhaseSpec` in ``acgs_remediate/phases/``
(name, title, playbook, plan_model, plan_host, playbook_vars, plan_tables/plan_markdown, outcome and
summary_columns; override fingerprint, prepare, applied, shared_failure or diff_lines when the phase
needs them), add it to ``_SPECS`` in ``acgs_remediate/phases/__init__.py``, and give it a thin CLI command
in ``cli/phases.py`` that calls ``run_phase_command`` (and its name in ``cli._COMMAND_MODULES``).
``plan PHASE``, ``-o``/``--plan``, ``--check``, the ledger and ``status`` then work for it unchanged.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import EXIT_USAGE, UsageError
from .state import StateStore, new_run_id

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .config import Policy
    from .execute import HostEvent, HostResult, RunResult
    from .inventory import Fleet, Host
    from .models import HostSnapshot, Unreachable

SAVED_PLAN_KIND = "acgs-remediate-plan"
SAVED_PLAN_VERSION = 1


class PhasePlan(Protocol):
    """What the flow needs of one host's plan (phase 1's is ``plan.HostPlan``)."""

    host: str
    predicted_bytes: int  # bytes the plan predicts to free on the host (all its actions together)
    notes: list[str]

    @property
    def actions(self) -> Sequence[Any]:
        """Return the plan's actions, in order."""
        ...

    def for_run(self) -> dict[str, Any]:
        """Return the plan as the playbook receives it."""
        ...

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]:  # pydantic
        """Return the plan as data."""
        ...


P = TypeVar("P", bound=PhasePlan)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageFacts(_Model):
    """The facts about one image a plan acts on that decide whether acting on it is still right."""

    tags: list[str] = Field(default_factory=list)  # sorted; [] for a dangling image
    digests: list[str] = Field(default_factory=list)  # repository digests, sorted: names too (pulled by digest)
    containers: list[str] = Field(default_factory=list)  # names of containers (any state) using it, sorted
    present: bool = True


class Fingerprint(_Model):
    """The facts one host's plan depends on, as they were when it was made.

    ``images``: image ID -> :class:`ImageFacts` for every image an action touches. ``extra``: any other
    fact a phase depends on, as ``name -> value`` (e.g. a build source's content hash for phase 2).
    """

    engine_id: str = ""
    policy_sha256: str = ""
    images: dict[str, ImageFacts] = Field(default_factory=dict)
    extra: dict[str, str] = Field(default_factory=dict)


def image_fingerprint(snapshot: HostSnapshot, image_ids: Iterable[str]) -> dict[str, ImageFacts]:
    """Return :class:`ImageFacts` of ``image_ids`` on ``snapshot`` (absent ones with ``present=False``)."""
    by_id = {img.id: img for img in snapshot.images}
    facts: dict[str, ImageFacts] = {}
    for image_id in image_ids:
        img = by_id.get(image_id)
        if img is None:
            facts[image_id] = ImageFacts(present=False)
            continue
        users = sorted(c.name for c in snapshot.containers_using(image_id))
        facts[image_id] = ImageFacts(tags=sorted(img.repo_tags), digests=sorted(img.repo_digests), containers=users)
    return facts


def _policy_hash(policy: Policy) -> str:
    import hashlib

    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def drift(host: str, saved: Fingerprint, now: Fingerprint) -> list[str]:
    """Return one line per fact of ``saved`` that ``now`` contradicts (empty: the plan still holds).

    Only the facts in ``saved`` are compared: whatever the plan did not depend on may change freely.
    """
    lines: list[str] = []
    if saved.engine_id and now.engine_id != saved.engine_id:
        lines.append(f"{host}: the engine is a different one (ID {saved.engine_id[:12]} -> {now.engine_id[:12]})")
    if saved.policy_sha256 and now.policy_sha256 != saved.policy_sha256:
        lines.append(f"{host}: its policy (acgs_policy) changed since the plan was made")
    for image_id, was in saved.images.items():
        cur = now.images.get(image_id, ImageFacts(present=False))
        name = f"image {image_id[:19]}… ({', '.join(was.tags) or ', '.join(was.digests) or 'dangling'})"
        if was.present and not cur.present:
            lines.append(f"{host}: {name} is no longer on the engine")
            continue
        if not was.present and cur.present:
            lines.append(f"{host}: {name} is on the engine again")
            continue
        new_users = sorted(set(cur.containers) - set(was.containers))
        if new_users:
            lines.append(f"{host}: {name} is now used by container {', '.join(new_users)}")
        if cur.tags != was.tags:
            added, gone = sorted(set(cur.tags) - set(was.tags)), sorted(set(was.tags) - set(cur.tags))
            what = []
            if added:
                what.append(f"now tagged {', '.join(added)}")
            if gone:
                what.append(f"no longer tagged {', '.join(gone)}")
            lines.append(f"{host}: {name} is {' and '.join(what)}")
        if cur.digests != was.digests:
            added = sorted(set(cur.digests) - set(was.digests))
            gone = sorted(set(was.digests) - set(cur.digests))
            what = [f"now named {', '.join(added)}"] if added else []
            what += [f"no longer named {', '.join(gone)}"] if gone else []
            lines.append(f"{host}: {name} is {' and '.join(what)}")
    for key, value in saved.extra.items():
        if now.extra.get(key) != value:
            lines.append(f"{host}: {key} changed ({value[:12]} -> {(now.extra.get(key) or 'gone')[:12]})")
    return lines


@dataclass
class HostOutcome:
    """What a run did on one host, as the phase reads it from the playbook's results.

    ``fields`` go into the host's JSON row as they are; ``cells`` are the values of the phase's
    ``summary_columns``; ``notes`` end up in the table's notes column; ``ledger_items`` are what the
    ledger records as changed (``removed`` of the phase record); ``predicted_bytes`` is what the plan
    predicted for what was actually done (bytes).
    """

    predicted_bytes: int
    fields: dict[str, Any] = field(default_factory=dict)
    cells: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    ledger_items: list[dict[str, Any]] = field(default_factory=list)
    # The host's state when the phase knows it better than the playbook's stats (phase 3: "rolled_back" for a
    # host the failure policy sent back, "pending" for one the rollout never reached); None: from the stats.
    status: str | None = None


class PhaseSpec(ABC, Generic[P]):
    """One phase: its planner, its renderer and its playbook. Everything else is the shared flow.

    Subclasses set the class attributes and implement the abstract methods; the other methods have
    defaults that fit a phase acting on images through one playbook.
    """

    name: ClassVar[str]  # "phase1": the command, the ledger's phase, the saved plan's phase
    title: ClassVar[str]  # "Phase 1 plan": the heading of the plan's Markdown
    shared_step: ClassVar[str] = "a step shared by every host"  # names it in messages (``shared_failure``)
    playbook: ClassVar[str]  # file name under playbooks/ ("phase1_emergency_cleanup.yml")
    plan_model: ClassVar[type[BaseModel]]  # the per-host plan model (saved plans are validated with it)
    summary_columns: ClassVar[tuple[str, ...]] = ()  # phase-specific columns of the result table
    # A phase that runs again on every run (hygiene): the ledger never skips a host that finished it.
    repeats: ClassVar[bool] = False
    # A phase whose playbook does nothing but its plan's actions (hygiene): a host whose plan has none is not
    # sent to the playbook (its outcome: ran, nothing changed, 0 bytes; measured as it was read). A scheduled
    # run with nothing to do then costs the facts and nothing more.
    skip_idle_hosts: ClassVar[bool] = False

    # -- planner ---------------------------------------------------------------------------------

    def prepare(self, policies: dict[str, Policy], inventory_base: Path) -> dict[str, Any]:
        """Return per-host planning input computed once per run for the whole fleet (default: none).

        ``policies``: host -> its validated policy. ``inventory_base``: the inventory's directory (relative
        source paths in policies are resolved against it).
        """
        return {}

    def observe(
        self,
        hosts: dict[str, Host],
        snapshots: dict[str, HostSnapshot],
        policies: dict[str, Policy],
        store: StateStore | None,
        prepared: dict[str, Any],
    ) -> dict[str, Any]:
        """Return per-host planning input that needs the hosts, their facts or the ledger (default: ``prepared``).

        Called after the facts are read, before planning, with the reachable ``hosts`` and their
        ``snapshots``; ``store`` is the state store (None when ``plan`` runs without one). Read-only: what a
        run should record goes in :meth:`after_run`.
        """
        return prepared

    def after_run(self, store: StateStore, report: RunReport) -> None:
        """Record what the phase learned during a run that was not in check mode (default: nothing)."""

    def before_plan(self, store: StateStore, hosts: list[Host], run_id: str, check: bool) -> None:
        """Put right what a dead run left on ``hosts`` before their facts are read (default: nothing).

        Called by a run (not by ``plan``) with the host locks held (none in check mode), after the ledger's
        own reconcile; ``run_id`` is the run's. Phase 3 returns a host whose switch a killed run left half
        done to its rollback unit here.
        """

    def needs_confirmation(self, planned: Planned) -> bool:
        """Return whether a run must ask before applying ``planned`` (default: always, unless ``--yes``)."""
        return True

    @abstractmethod
    def plan_host(self, snapshot: HostSnapshot, policy: Policy, prepared: Any) -> P:
        """Return one host's plan; ``prepared`` is that host's value from :meth:`prepare` (or None)."""

    @abstractmethod
    def playbook_vars(self, plans: dict[str, P]) -> dict[str, Any]:
        """Return the extravars that carry ``plans`` (host -> plan) to the playbook."""

    def fingerprint(self, plan: P, snapshot: HostSnapshot, policy: Policy) -> Fingerprint:
        """Return the facts of ``snapshot`` that ``plan`` depends on (default: engine and policy only)."""
        return Fingerprint(engine_id=snapshot.engine.engine_id, policy_sha256=_policy_hash(policy))

    # -- renderer --------------------------------------------------------------------------------

    @abstractmethod
    def plan_tables(self, plan: P) -> list[RenderableType]:
        """Return the rich renderables showing one host's plan (what it does, what stays and why)."""

    def run_tables(self, plan: P) -> list[RenderableType]:
        """Return what a run shows of one host's plan before acting (default: :meth:`plan_tables`, all of it)."""
        return self.plan_tables(plan)

    @abstractmethod
    def plan_markdown(self, plan: P) -> list[str]:
        """Return the Markdown lines of one host's plan section."""

    @abstractmethod
    def outcome(self, plan: P, before: HostSnapshot, result: HostResult, check: bool) -> HostOutcome:
        """Return what the run did (or would do, in check mode) on one host, from its playbook results."""

    def diff_lines(self, result: RunResult) -> list[tuple[str, str]]:
        """Return ``(style, line)`` pairs showing what the run changed, for ``--diff`` (default: none)."""
        return []

    # -- run -------------------------------------------------------------------------------------

    def applied(self, result: HostResult) -> bool:
        """Return whether the host's part of the run reached its end, so its bytes are worth measuring."""
        return result.status in ("ok", "changed")

    def shared_failure(self, result: RunResult) -> str | None:
        """Return why a run-once step shared by every host failed (then no host finished), else None."""
        return None


@dataclass
class Planned:
    """Facts and plans of one flow, before anything changed: what ``plan`` shows and a run applies."""

    spec: PhaseSpec[Any]
    plans: dict[str, Any]  # host -> plan (the spec's plan model)
    snapshots: dict[str, HostSnapshot]
    unreachable: list[Unreachable]
    skipped_done: list[str] = field(default_factory=list)  # hosts whose phase already succeeded
    saved_plan: Path | None = None  # the file the plans come from, when applying a saved plan

    @property
    def ordered(self) -> list[Any]:
        """Return the plans sorted by host."""
        return [self.plans[h] for h in sorted(self.plans)]

    def action_count(self) -> int:
        """Return the number of actions of every plan together."""
        return sum(len(p.actions) for p in self.plans.values())


@dataclass
class RunReport:
    """The outcome of one run of a phase; rows are the per-host JSON rows (``host``, ``status``, ...)."""

    phase: str
    check: bool
    rows: list[dict[str, Any]]
    unreachable: list[Unreachable]
    skipped_done: list[str]
    run_id: str | None = None
    status: str | None = None  # the playbook run's: successful / failed / interrupted
    seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cells: dict[str, tuple[str, ...]] = field(default_factory=dict)  # host -> summary_columns values
    notes: dict[str, list[str]] = field(default_factory=dict)  # host -> notes column
    diff: list[tuple[str, str]] = field(default_factory=list)  # (style, line) for --diff
    saved_plan: Path | None = None  # the saved plan the run applied, if any

    @property
    def nothing_to_do(self) -> bool:
        """Return True when every selected host had already finished the phase."""
        return self.run_id is None and not self.rows and not self.unreachable

    def exit_code(self) -> int:
        """Return 1 when a host failed, was interrupted or rolled back, 3 when one was unreachable, else 0."""
        from .errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL

        if any(r["status"] in ("failed", "interrupted", "rolled_back") for r in self.rows):
            return EXIT_FAILED
        if self.unreachable or any(r["status"] == "unreachable" for r in self.rows):
            return EXIT_PARTIAL
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        """Return the JSON output of the run (the CLI's ``--format json``)."""
        run: dict[str, Any] = {}
        if self.run_id is not None:
            run = {"run_id": self.run_id, "status": self.status, "seconds": self.seconds, "timings": self.timings}
        return {
            "phase": self.phase,
            "check": self.check,
            **run,
            "hosts": self.rows,
            "unreachable": [u.model_dump() for u in self.unreachable],
            "skipped_done": self.skipped_done,
            **({"plan_file": str(self.saved_plan)} if self.saved_plan is not None else {}),
        }


class Interaction(Protocol):
    """What the flow needs from whoever drives it (the CLI): show, ask, display progress."""

    def reconciled(self, host: str, phase: str) -> None:
        """Tell that ``host``'s ``phase`` run ended without a result and is now marked interrupted."""

    def skipping(self, phase: str, hosts: list[str]) -> None:
        """Tell that ``hosts`` already finished ``phase`` and are skipped."""

    def show(self, planned: Planned) -> None:
        """Show the plans (before anything changes)."""

    def confirm(self, planned: Planned) -> None:
        """Ask to go on; raise (a UsageError: exit 2, nothing changed) when the answer is no."""

    def progress(self, hosts: list[str]) -> AbstractContextManager[Callable[[HostEvent], None]]:
        """Return a context whose value receives every per-host event of the playbook run."""


@dataclass(frozen=True)
class RunOptions:
    """How to run a phase: the CLI's options, typed."""

    check: bool = False  # the playbook runs in check mode; nothing changes; no ledger entry, no lock
    diff: bool = False
    yes: bool = False  # do not ask (``Interaction.confirm`` is not called)
    force: bool = False  # also re-run hosts that finished the phase
    forks: int = 5
    saved_plan: Path | None = None  # apply this saved plan (see the module docstring)


# -- facts and plans ------------------------------------------------------------------------------


def _inventory_base(fleet: Fleet) -> Path:
    return fleet.source if fleet.source.is_dir() else fleet.source.parent


def policies_of(fleet: Fleet) -> dict[str, Policy]:
    """Return host -> validated policy for every host of ``fleet``; raise UsageError (exit 2) on a bad one.

    Called before any engine is touched: a bad policy changes nothing anywhere.
    """
    return {h.name: fleet.policy(h) for h in fleet.hosts}


def with_arrival_ledger(snapshots: dict[str, HostSnapshot], store: StateStore | None) -> dict[str, HostSnapshot]:
    """Return the snapshots with the state store's first sightings as the arrival of images the engine dated not.

    Records the sightings (``StateStore.note_arrivals``): the arrival ledger, never the phase ledger. Without a
    store the engine's evidence alone decides (an image it does not date counts as fresh).
    """
    if store is None or not snapshots:
        return snapshots
    return {name: store.note_arrivals(snap) for name, snap in snapshots.items()}


def _read_and_plan(
    spec: PhaseSpec[Any],
    fleet: Fleet,
    hosts: list[Host],
    policies: dict[str, Policy],
    forks: int,
    plan: bool = True,
    store: StateStore | None = None,
) -> tuple[dict[str, Any], dict[str, HostSnapshot], list[Unreachable]]:
    """Return (plans, snapshots, unreachable) for ``hosts``: facts read in parallel, then each host planned.

    ``plan=False`` only reads the facts (plans stay empty): a saved plan is applied instead of a new one.
    """
    from .facts import collect_many

    snapshots, unreachable = collect_many(hosts, forks=forks)
    snapshots = with_arrival_ledger(snapshots, store)
    if not plan:
        return {}, snapshots, unreachable
    reachable = {h: policies[h] for h in snapshots}
    prepared = spec.prepare(reachable, _inventory_base(fleet))
    by_name = {h.name: h for h in hosts if h.name in snapshots}
    prepared = spec.observe(by_name, snapshots, reachable, store, prepared)
    plans = {name: spec.plan_host(snap, policies[name], prepared.get(name)) for name, snap in snapshots.items()}
    return plans, snapshots, unreachable


def _finished(store: StateStore | None, hosts: Iterable[str], spec: PhaseSpec[Any]) -> list[str]:
    if store is None or spec.repeats:
        return []
    return [h for h in hosts if (r := store.phase_status(h, spec.name)) is not None and r.status == "succeeded"]


def plan_phase(
    spec: PhaseSpec[Any],
    inventory: Path | None,
    hosts: str,
    state: Path,
    forks: int = 5,
    save_to: Path | None = None,
) -> Planned:
    """Return the plans of ``spec`` for the hosts ``hosts`` selects (read-only: no lock, no ledger entry).

    ``skipped_done`` lists the hosts that already finished the phase (a run skips them unless forced).
    ``save_to``: also write the plans, with the facts they depend on, as a saved plan (:func:`save_plan`).
    Raises UsageError (exit 2) on a bad inventory, pattern or policy, or an unwritable ``save_to``.
    """
    from .inventory import load_fleet

    fleet = load_fleet(inventory, hosts)
    policies = policies_of(fleet)
    if save_to is not None:
        _check_writable(save_to)
    done: list[str] = []
    # The ledger is read when there is one (hygiene's last use); planning never writes the phase ledger (it
    # records first sightings of images, the last evidence of their arrival, in an existing store).
    store = StateStore(state) if state.exists() else None
    try:
        plans, snapshots, unreachable = _read_and_plan(spec, fleet, fleet.hosts, policies, forks, store=store)
        done = _finished(store, [h.name for h in fleet.hosts], spec)
    finally:
        if store is not None:
            store.close()
    planned = Planned(spec, plans, snapshots, unreachable, done)
    if save_to is not None:
        save_plan(planned, policies, fleet.source, save_to)
    return planned


# -- saved plans ----------------------------------------------------------------------------------


class SavedHostPlan(_Model):
    """One host of a saved plan: its plan exactly as shown, and the facts it was made from."""

    plan: dict[str, Any]  # the spec's plan model, as JSON (validated with ``spec.plan_model`` on load)
    fingerprint: Fingerprint


class SavedPlan(_Model):
    """A plan file: ``plan PHASE -o FILE`` writes it, ``PHASE --plan FILE`` applies it exactly."""

    kind: Literal["acgs-remediate-plan"]
    version: Literal[1]
    phase: str
    created_at: datetime
    inventory: str  # where the hosts came from (informational)
    hosts: dict[str, SavedHostPlan]


def _check_writable(path: Path) -> None:
    """Raise UsageError (exit 2) unless a plan file can be written at ``path``."""
    path = path.expanduser()
    if path.is_dir():
        raise UsageError(f"cannot write the plan to {path}: it is a directory", hint="pass -o FILE")
    if not path.parent.is_dir():
        raise UsageError(
            f"cannot write the plan to {path}: {path.parent} is not a directory",
            hint="pass -o with a path in an existing directory",
        )


def save_plan(planned: Planned, policies: dict[str, Policy], inventory: Path, path: Path) -> None:
    """Write ``planned`` as a saved plan to ``path`` (atomically: temp file + rename, mode 0600)."""
    import os
    import tempfile

    spec = planned.spec
    saved = SavedPlan(
        kind=SAVED_PLAN_KIND,
        version=SAVED_PLAN_VERSION,
        phase=spec.name,
        created_at=datetime.now(UTC),
        inventory=str(inventory),
        hosts={
            name: SavedHostPlan(
                plan=plan.model_dump(mode="json"),
                fingerprint=spec.fingerprint(plan, planned.snapshots[name], policies[name]),
            )
            for name, plan in sorted(planned.plans.items())
        },
    )
    path = path.expanduser()
    _check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(saved.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_plan(spec: PhaseSpec[Any], path: Path) -> tuple[SavedPlan, dict[str, Any]]:
    """Return the saved plan in ``path`` and its host -> plan (``spec.plan_model``), validated.

    Raises UsageError (exit 2, one line naming the file and what is wrong) for a missing, unreadable or
    malformed file, a file that is not a saved plan, or a plan of another phase.
    """
    path = path.expanduser()
    hint = f"write one with `acgs-remediate plan {spec.name} -o {path}`"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"plan file {path} does not exist", hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read plan file {path}: {exc}", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"plan file {path} is not JSON: {exc}", hint=hint) from None
    if not isinstance(data, dict) or data.get("kind") != SAVED_PLAN_KIND:
        raise UsageError(f'{path} is not an acgs-remediate plan file (no "kind": "{SAVED_PLAN_KIND}")', hint=hint)
    saved = _validated(path, hint, "", SavedPlan.model_validate, data)
    if saved.phase != spec.name:
        raise UsageError(
            f"{path} is a plan of {saved.phase}, not of {spec.name}",
            hint=f"apply it with `acgs-remediate {saved.phase} --plan {path}`",
        )
    plans: dict[str, Any] = {}
    for name, host in saved.hosts.items():
        plans[name] = _validated(path, hint, f"hosts.{name}.plan.", spec.plan_model.model_validate, host.plan)
        if plans[name].host != name:
            raise UsageError(f"plan file {path}: the plan under hosts.{name} is for host {plans[name].host}", hint=hint)
    return saved, plans


def _validated(path: Path, hint: str, prefix: str, validate: Callable[[Any], Any], data: Any) -> Any:
    """Return ``validate(data)``; raise UsageError naming the file and the first invalid field."""
    try:
        return validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = prefix + ".".join(str(p) for p in first["loc"])
        raise UsageError(
            f"plan file {path} is invalid at {where.rstrip('.') or 'top level'}: {first['msg']}", hint=hint
        ) from None


class StalePlanError(UsageError):
    """A saved plan whose facts changed in a way that matters: refused, nothing changed (exit 2)."""

    exit_code = EXIT_USAGE


# -- the run ----------------------------------------------------------------------------------------


def bytes_of(snapshot: HostSnapshot) -> int:
    """Return image layers (the engine's own LayersSize, shared layers once) + build cache, in bytes."""
    from .analysis import storage_bytes

    storage = storage_bytes(snapshot)
    layers = snapshot.df_layers_size if snapshot.df_layers_size is not None else storage["images"]
    return int(layers) + int(storage["build_cache"])


def measure(hosts: list[Host], forks: int) -> dict[str, int]:
    """Return the bytes of :func:`bytes_of` per host, measured with one /system/df call each.

    A host that cannot be read (it went away after its run) is left out: its bytes are unknown.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .facts import disk_usage

    def one(host: Host) -> tuple[str, int | None]:
        try:
            df = disk_usage(host)
        except Exception:  # a host that went away after its run: its bytes are simply unknown
            return host.name, None
        cache = sum(int(b.get("Size") or 0) for b in df.get("BuildCache") or [] if not b.get("Shared"))
        return host.name, int(df.get("LayersSize") or 0) + cache

    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        return {name: value for name, value in pool.map(one, hosts) if value is not None}


def run_phase(
    spec: PhaseSpec[Any],
    inventory: Path | None,
    hosts: str,
    state: Path,
    options: RunOptions,
    ui: Interaction,
) -> RunReport:
    """Run ``spec`` on the hosts ``hosts`` selects: the whole flow, recorded per host in the ledger.

    lock -> facts -> plan (or the saved plan, after checking its facts) -> ``ui.show`` -> stop at the
    playbook's check mode when ``options.check`` -> ``ui.confirm`` unless ``options.yes`` -> the playbook
    with live ``ui.progress`` -> bytes measured again -> one ledger entry per host.

    Raises UsageError (exit 2, nothing changed): bad inventory, pattern, policy or plan file, a saved plan
    whose facts changed (:class:`StalePlanError`), no confirmation; LockedError (exit 2): another run holds
    a host. A run cut short (exception, Ctrl-C) leaves its hosts "interrupted" in the ledger.
    """
    from .inventory import load_fleet

    fleet = load_fleet(inventory, hosts)
    policies = policies_of(fleet)
    spec.prepare(policies, _inventory_base(fleet))  # its input errors (a Dockerfile that does not parse): exit 2 now
    saved: tuple[SavedPlan, dict[str, Any]] | None = None
    selected = fleet.hosts
    if options.saved_plan is not None:
        saved = load_plan(spec, options.saved_plan)
        names = {h.name for h in fleet.hosts}
        missing = sorted(set(saved[1]) - names)
        if missing and hosts == "all":
            raise UsageError(
                f"plan file {options.saved_plan} names host(s) the inventory {fleet.source} does not have: "
                f"{', '.join(missing)}",
                hint="apply the plan with the inventory it was made from (-i)",
            )
        selected = [h for h in fleet.hosts if h.name in saved[1]]
        if not selected:
            raise UsageError(
                f"no selected host is in the plan file {options.saved_plan}",
                hint=f"it plans: {', '.join(sorted(saved[1]))}",
            )
    fresh = not state.exists()
    store = StateStore(state)
    try:
        return _run(spec, fleet, selected, policies, store, options, ui, saved)
    except UsageError:
        if fresh:  # refused before any run was recorded: leave no new state store behind (issue 14)
            store.discard_if_unused()
        raise
    finally:
        store.close()


def run_on_fleet(
    spec: PhaseSpec[Any], fleet: Fleet, store: StateStore, options: RunOptions, ui: Interaction
) -> RunReport:
    """Run ``spec`` on every host of an already loaded ``fleet`` (its policies as they are in memory).

    The same flow as :func:`run_phase` without a saved plan: for callers (and tests) that adjust a loaded
    fleet's policies before running; the playbook still reads the connection variables from
    ``fleet.source``, so a phase whose playbook needs the adjusted policy passes it in its extravars.
    """
    policies = policies_of(fleet)
    spec.prepare(policies, _inventory_base(fleet))
    return _run(spec, fleet, list(fleet.hosts), policies, store, options, ui, None)


def _run(
    spec: PhaseSpec[Any],
    fleet: Fleet,
    selected: list[Host],
    policies: dict[str, Policy],
    store: StateStore,
    options: RunOptions,
    ui: Interaction,
    saved: tuple[SavedPlan, dict[str, Any]] | None,
) -> RunReport:
    from .execute import HostResult, RunResult, run_playbook
    from .resources import playbooks_dir

    for host, phase in store.reconcile():
        ui.reconciled(host, phase)
    done = [] if options.force else _finished(store, [h.name for h in selected], spec)
    todo = [h for h in selected if h.name not in done]
    if done:
        ui.skipping(spec.name, done)
    if not todo:
        return RunReport(spec.name, options.check, [], [], done)

    run_id = new_run_id(spec.name)
    locks = None if options.check else store.lock_hosts([h.name for h in todo], run_id)
    try:
        spec.before_plan(store, todo, run_id, options.check)
        clock = time.monotonic()
        plans, before, unreachable = _read_and_plan(spec, fleet, todo, policies, options.forks, saved is None, store)
        if saved is not None:
            plans = _saved_plans_if_unchanged(spec, saved, before, policies, options.saved_plan)
        timings = {"facts_and_plan": round(time.monotonic() - clock, 2)}
        planned = Planned(spec, plans, before, unreachable, done, options.saved_plan)
        ui.show(planned)
        if not plans:
            _finish_unreachable(spec, store, run_id, unreachable, options.check)
            return RunReport(spec.name, options.check, [], unreachable, done)
        targets = sorted(plans)
        idle = [n for n in targets if spec.skip_idle_hosts and not plans[n].actions]
        busy = [n for n in targets if n not in idle]
        if busy and not options.check and not options.yes and spec.needs_confirmation(planned):
            ui.confirm(planned)
        if not options.check:
            store.begin_run(run_id, spec.name, targets + [u.host for u in unreachable])
            for name in targets:
                store.mark_running(name, spec.name, run_id, bytes_before=bytes_of(before[name]))
            _finish_unreachable(spec, store, run_id, unreachable, options.check)
        try:
            result = RunResult(status="successful", rc=0, hosts={}, stats={})
            if busy:
                with ui.progress(busy) as on_event:
                    result = run_playbook(
                        playbooks_dir() / spec.playbook,
                        fleet.source,
                        busy,
                        extravars=spec.playbook_vars({n: plans[n] for n in busy}),
                        check=options.check,
                        diff=options.diff,
                        forks=options.forks,
                        on_event=on_event,
                    )
            result.hosts.update({n: HostResult(n, status="ok") for n in idle})
        except BaseException:
            if not options.check:
                for name in targets:
                    store.finish_host(name, spec.name, run_id, "interrupted", detail="the orchestrator was interrupted")
                store.finish_run(run_id, "interrupted")
            raise
        timings["playbook"] = round(result.seconds, 2)
        clock = time.monotonic()
        after: dict[str, int] = {}
        if not options.check:
            # Every host whose own part ran to its end is measured, even when the run failed elsewhere.
            after = measure([fleet.host(n) for n in busy if spec.applied(result.hosts[n])], options.forks)
            after.update({n: bytes_of(before[n]) for n in idle})  # nothing was run there: as read just now
        timings["measure_after"] = round(time.monotonic() - clock, 2)
        report = RunReport(
            spec.name,
            options.check,
            [],
            unreachable,
            done,
            run_id=run_id,
            status=result.status,
            seconds=round(result.seconds, 2),
            timings=timings,
            saved_plan=options.saved_plan,
        )
        _summarise(spec, store, report, plans, before, after, result)
        report.diff = spec.diff_lines(result) if options.diff else []
        if not options.check:
            spec.after_run(store, report)
            applied = f"applied the saved plan {options.saved_plan}" if options.saved_plan else None
            store.finish_run(run_id, result.status, detail=applied)
        return report
    finally:
        if locks is not None:
            locks.release()


def _saved_plans_if_unchanged(
    spec: PhaseSpec[Any],
    saved: tuple[SavedPlan, dict[str, Any]],
    snapshots: dict[str, HostSnapshot],
    policies: dict[str, Policy],
    path: Path | None,
) -> dict[str, Any]:
    """Return the saved plans of the reachable hosts; raise StalePlanError when a fact they depend on changed.

    Facts are compared host by host with the fingerprint the spec computes for the *saved* plan over the
    facts read now, so only what the plan depends on is compared.
    """
    record, plans = saved
    lines: list[str] = []
    for name in sorted(snapshots):
        now = spec.fingerprint(plans[name], snapshots[name], policies[name])
        was = record.hosts[name].fingerprint
        if set(now.images) != set(was.images) or set(now.extra) != set(was.extra):
            # Recorded facts that do not cover exactly what the actions touch: the file was edited.
            lines.append(f"{name}: the plan's actions and the facts recorded for them do not match (edited file?)")
            continue
        lines += drift(name, was, now)
    if lines:
        raise StalePlanError(
            f"refusing the saved plan {path}: the facts it was made from changed on "
            f"{len({ln.split(':', 1)[0] for ln in lines})} host(s); nothing was changed\n" + "\n".join(lines),
            hint=f"review a new plan: acgs-remediate plan {spec.name} -o {path}",
        )
    return {name: plans[name] for name in snapshots}


def _finish_unreachable(
    spec: PhaseSpec[Any], store: StateStore, run_id: str, unreachable: list[Unreachable], check: bool
) -> None:
    if check:
        return
    for u in unreachable:
        store.finish_host(u.host, spec.name, run_id, "failed", detail=f"unreachable: {u.reason}")


def _summarise(
    spec: PhaseSpec[Any],
    store: StateStore,
    report: RunReport,
    plans: dict[str, Any],
    before: dict[str, HostSnapshot],
    after: dict[str, int],
    result: RunResult,
) -> None:
    """Fill ``report``'s rows, one per host; record each host's outcome in the ledger (not in check mode).

    A step shared by every host that failed (``spec.shared_failure``; phase 1's build files, repaired once
    on the control node for sources every host's services share) leaves the phase unfinished on every host
    of the run, not only on the host Ansible ran it for; a re-run retries them all.
    """
    check = report.check
    shared = spec.shared_failure(result)
    for name in sorted(plans):
        hr = result.hosts[name]
        outcome = spec.outcome(plans[name], before[name], hr, check)
        bytes_before = bytes_of(before[name])
        bytes_after = after.get(name)
        if result.interrupted:
            status = "interrupted"
        elif hr.status in ("ok", "changed"):
            status = ("would change" if hr.changed else "no change") if check else "succeeded"
        else:
            status = hr.status  # failed / unreachable / not_run
        if outcome.status is not None and not result.interrupted:
            status = outcome.status
        messages = list(hr.messages)
        if shared is not None and not result.interrupted:
            if status in ("succeeded", "would change", "no change"):
                status = "failed"
            if not any(shared in m for m in messages):
                messages.append(f"{spec.shared_step}: {shared}")
        row = {
            "host": name,
            "status": status,
            "changed": hr.changed,
            "actions": len(plans[name].actions),
            **outcome.fields,
            "predicted_bytes": outcome.predicted_bytes,
            "bytes_before": bytes_before,
            "bytes_after": bytes_after,
            "measured_freed": (bytes_before - bytes_after) if bytes_after is not None else None,
            "messages": messages,
        }
        report.rows.append(row)
        report.cells[name] = outcome.cells
        report.notes[name] = outcome.notes + messages
        if check:
            continue
        ledger_status = status if status in ("succeeded", "interrupted", "rolled_back", "pending") else "failed"
        store.finish_host(
            name,
            spec.name,
            report.run_id or "",
            ledger_status,  # type: ignore[arg-type]
            bytes_after=bytes_after,
            bytes_freed=row["measured_freed"],
            removed=outcome.ledger_items,
            # A phase that knows the host's state better than the stats (phase 3) says why in its notes.
            detail="; ".join(messages) or ("; ".join(outcome.notes) if outcome.status else "") or None,
        )
        if bytes_after is not None:
            store.add_measurement(
                name,
                spec.name,
                {"bytes_before": bytes_before, "bytes_after": bytes_after, "predicted": outcome.predicted_bytes},
                run_id=report.run_id,
            )
