"""Success-criteria verdicts as JUnit XML, so CI systems show one test per host and criterion."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from .criteria import CriterionResult, Status

SUITE_PREFIX = "acgs-remediate.verify"


def to_junit(
    per_host: Mapping[str, Sequence[CriterionResult]], unreachable: Mapping[str, str] | None = None
) -> str:
    """Return a JUnit XML document: one <testsuite> per host, one <testcase> per criterion.

    A failing criterion is a <failure type="fail">, a not-verified one a <failure type="not_verified">
    (it blocks the gate like a failure); a host whose engine could not be read gets an <error
    type="unreachable"> on every criterion. The message carries the causes.
    """
    unreachable = dict(unreachable or {})
    root = ET.Element("testsuites", name="acgs-remediate verify")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for host, results in per_host.items():
        suite = ET.SubElement(root, "testsuite", name=f"{SUITE_PREFIX}.{host}")
        counts = {"tests": 0, "failures": 0, "errors": 0}
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=f"{SUITE_PREFIX}.{host}", name=r.id)
            counts["tests"] += 1
            summary = f"{r.title}: measured {r.measured}, threshold {r.threshold}"
            if host in unreachable:
                counts["errors"] += 1
                node = ET.SubElement(
                    case, "error", type="unreachable", message=f"engine unreachable: {unreachable[host]}"
                )
                node.text = "\n".join(r.causes) or unreachable[host]
            elif r.status is not Status.passed:
                counts["failures"] += 1
                first = r.causes[0] if r.causes else r.status.value
                node = ET.SubElement(
                    case, "failure", type=r.status.value, message=f"{r.status.value}: {first}"
                )
                node.text = summary + "\n" + "\n".join(r.causes)
            out = ET.SubElement(case, "system-out")
            out.text = summary
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(
    path: Path,
    per_host: Mapping[str, Sequence[CriterionResult]],
    unreachable: Mapping[str, str] | None = None,
) -> None:
    """Write the JUnit XML of ``per_host`` to ``path`` (atomically, creating parent directories)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_junit(per_host, unreachable), encoding="utf-8")
    tmp.chmod(0o600)  # owner only, like every report
    tmp.replace(path)
