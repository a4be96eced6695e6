"""The gate phase 2's build role calls on each freshly built image: ``gates.run_gates`` as build verdicts.

The role ``service_build`` (module ``acgs_service_build``, option ``gate``) calls
``acgs_remediate.release_gate:gate(builder, source, image, policy=policy)`` for every image it built (or
found built but never released); an image is shipped and release-tagged only when every verdict passed
(issue 10 item 4). This is the seam between engineer B's ``builds`` (which knows hosts and images) and
engineer G's ``gates`` (which knows services and policies): it turns one into the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .models import GateVerdict

if TYPE_CHECKING:
    from .builds import BuildSource, BuiltImage
    from .config import Policy
    from .inventory import Host

GATE = "acgs_remediate.release_gate:gate"
# Smoke tests run on the builder with host networking: each service gets its own 127.x address.
_SMOKE_NET = "127.0.98."


def smoke_address(policy: Policy, service: str) -> str:
    """Return the 127.x address the smoke test of ``service`` binds to (one per service of the policy)."""
    names = [s.name for s in policy.services]
    index = names.index(service) if service in names else len(names)
    return f"{_SMOKE_NET}{10 + index}"


def gate(builder: Host, source: BuildSource, image: BuiltImage, *, policy: Policy) -> Sequence[GateVerdict]:
    """Return the verdicts of every gate of ``image`` (built for ``source.service``) on ``builder``'s engine.

    Size cap and expected size (bytes, the policy's), build time (seconds; only when the image was built
    by this run: an image found built keeps the verdict recorded when it was built), smoke test with the
    image's HEALTHCHECK, dev-tool scan. A gate that cannot run (engine error) is a failed verdict naming
    why, never a pass. Raises nothing.
    """
    import docker

    from .gates import run_gates

    svc = next((s for s in policy.services if s.name == source.service), None)
    if svc is None:
        return [GateVerdict(name="policy", passed=False, detail=f"service {source.service} is not in the policy")]
    try:
        client = docker.DockerClient(**builder.docker_client_kwargs())
        try:
            report = run_gates(
                client,
                image.image_id,
                svc,
                policy,
                build_seconds=image.seconds if image.built else None,
                address=smoke_address(policy, svc.name),
            )
        finally:
            client.close()
    except Exception as exc:  # the engine went away mid-gate: not a pass
        return [GateVerdict(name="gates", passed=False, detail=f"gates could not run on {builder.name}: {exc}")]
    return [GateVerdict(name=r.gate, passed=r.passed, detail=r.reason) for r in report.results]
