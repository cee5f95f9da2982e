"""Audit reports: named checks, each on one file, and `agree` (a stated value equals a recomputed one).

Every audit (curation runs, datasets, mixtures, releases) fills one `AuditReport`; the CLI prints it and
exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a key one side of a comparison lacks


@dataclass
class Check:
    file: str
    check: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        return f"{status} {self.file}: {self.check}" + (f": {self.detail}" if self.detail else "")


@dataclass
class AuditReport:
    path: str
    kind: str
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def failing_files(self) -> set[str]:
        return {c.file for c in self.failures}

    def add(self, file: str, check: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(file, check, bool(ok), "" if ok else detail))
        return bool(ok)

    def render(self, verbose: bool = False) -> str:
        lines = [c.line() for c in self.checks if verbose or not c.ok]
        facts = ", ".join(f"{k} {v}" for k, v in self.summary.items())
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"audit {self.path}: {self.kind}; {facts}; {len(self.checks)} checks, "
                     f"{len(self.failures)} failed: {verdict}")
        return "\n".join(lines)


def differences(stated: Any, actual: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(field path, stated, recomputed) for every leaf where two JSON values differ (1, 1.0 and true differ)."""
    if isinstance(stated, dict) and isinstance(actual, dict):
        return [d for key in sorted(set(stated) | set(actual), key=str)
                for d in differences(stated.get(key, ABSENT), actual.get(key, ABSENT), f"{path}.{key}")]
    if isinstance(stated, list) and isinstance(actual, list) and len(stated) == len(actual):
        return [d for i, (a, b) in enumerate(zip(stated, actual, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    if stated is ABSENT or actual is ABSENT:
        return [(path, stated, actual)]
    same = json.dumps(stated, sort_keys=True) == json.dumps(actual, sort_keys=True)
    return [] if same else [(path, stated, actual)]


def agree(report: AuditReport, file: str, field: str, stated: Any, actual: Any, source: str) -> bool:
    """A check on `file` named by the manifest `field`: what it states equals what `source` recomputes."""
    diffs = differences(stated, actual, field)
    detail = "; ".join(f"{'' if p == field else p + ': '}{file} states {a!r}, {source} gives {b!r}"
                       for p, a, b in diffs[:4])
    return report.add(file, field, not diffs, detail + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""))
