"""What a stage's result depends on besides its config: the digests of its inputs and of atom's code.

A finished stage may be reused only while its config, its inputs and the code are unchanged. The
config is a run directory's identity (`rundir.config_digest`); this module names the other two, so that
a rerun after a page was added to a source, an upstream stage was redone, or the code changed is
refused with a message saying what changed instead of silently reusing the old result.

Digests hold no absolute paths: the same inputs in another directory give the same fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.manifest import sha256_file

FINGERPRINT_SCHEMA = "atom.run_inputs/1"
# The record a finished stage leaves: an upstream run is identified by it (it pins the run's files by hash).
FINAL_RECORDS = ("manifest.json", "summary.json")
CODE_PACKAGES = ("atom", "core", "data_pipeline", "pretrain", "midtrain", "release", "slurm")
CODE_SUFFIXES = (".py", ".sh")


def path_fingerprint(path: str | Path) -> str:
    """Digest of what a stage reads at `path`.

    A file: its sha256. An atom run directory: the sha256 of its final record (which pins every file it
    vouches for). Any other directory: every file under it (dot-files included), by relative path,
    size and sha256, so an added, removed or edited page changes it.
    """
    path = Path(path)
    if path.is_file():
        return f"file:{sha256_file(path)}"
    if not path.is_dir():
        return "missing"
    for record in FINAL_RECORDS:
        if (path / record).is_file():
            return f"{record}:{sha256_file(path / record)}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{file.stat().st_size}\0{sha256_file(file)}\n".encode())
    return f"tree:{digest.hexdigest()}"


def source_digest(root: Path) -> str:
    """sha256 over the source files (path and bytes) of atom's packages under `root`."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for file in sorted((root / package).rglob("*")):
            if file.suffix in CODE_SUFFIXES and file.is_file() and "__pycache__" not in file.parts:
                digest.update(f"{file.relative_to(root).as_posix()}\0".encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """The digest of the code running now: changes with any edit, committed or not."""
    return source_digest(Path(__file__).resolve().parent.parent)


def run_fingerprint(inputs: Mapping[str, str | Path]) -> dict[str, Any]:
    """The fingerprint a run directory records: named input digests and the code digest."""
    return {
        "schema": FINGERPRINT_SCHEMA,
        "code": code_fingerprint(),
        "inputs": {name: path_fingerprint(path) for name, path in sorted(inputs.items())},
    }


def input_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable input differences between two fingerprints (added, removed, changed)."""
    before, after = old.get("inputs", {}), new.get("inputs", {})
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            changes.append(f"input {name!r} no longer read")
        elif name not in before:
            changes.append(f"input {name!r} added")
        elif before[name] != after[name]:
            changes.append(f"input {name!r} changed")
    return changes


def code_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return old.get("code") != new.get("code")
