"""The phases the shared flow (``acgs_remediate.orchestrate``) runs: one PhaseSpec each.

Adding a phase: a module here with its ``PhaseSpec`` subclass, and one entry in ``_SPECS`` (see the
"How to add a phase" paragraph of ``orchestrate``).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UsageError
from ..orchestrate import PhaseSpec

# Phase name -> "module:class" (imported on first use, so a command loads only the phase it runs).
_SPECS = {
    "phase1": "phase1:Phase1",
    "phase2": "phase2:Phase2",
    "phase3": "phase3:Phase3",
    "hygiene": "hygiene:Hygiene",
}
PHASE_NAMES: tuple[str, ...] = tuple(_SPECS)


def get_spec(name: str) -> PhaseSpec[Any]:
    """Return the PhaseSpec of phase ``name``; raise UsageError (exit 2) for an unknown phase."""
    if name not in _SPECS:
        raise UsageError(f"unknown phase {name!r}", hint=f"plannable phases: {', '.join(PHASE_NAMES)}")
    module, cls = _SPECS[name].split(":")
    spec: PhaseSpec[Any] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return spec
