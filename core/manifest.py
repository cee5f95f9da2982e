"""Shared pieces of the open manifests every stage writes.

Manifests are canonical JSON (see `rundir.write_json`): sorted keys, relative paths, no timestamps
inside what is hashed, so the same inputs and config give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path, root: Path) -> dict[str, Any]:
    """{path relative to root (posix), bytes, sha256}: how every manifest names a file it vouches for."""
    path = Path(path)
    return {
        "path": path.relative_to(root).as_posix(),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def verify_file_record(record: dict[str, Any], root: Path) -> str | None:
    """None when the file at root/record['path'] has the recorded size and hash, else what is wrong."""
    path = root / record["path"]
    if not path.is_file():
        return f"{record['path']}: missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{record['path']}: size {size} != recorded {record['bytes']}"
    if sha256_file(path) != record["sha256"]:
        return f"{record['path']}: sha256 differs from the manifest"
    return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_checkout() -> dict[str, Any]:
    """The commit of this checkout and whether the working tree differs from it (None: not a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    return {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}


def code_version() -> str:
    """The code that wrote a manifest: `git:<commit>` of this checkout when there is one, else the package."""
    commit = _git("rev-parse", "HEAD")
    if commit and commit.strip():
        return f"git:{commit.strip()}"
    try:
        return f"atom=={metadata.version('atom')}"
    except metadata.PackageNotFoundError:
        return "atom==unknown"


def canonical_sha256(obj: Any) -> str:
    """sha256 of `obj` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recorded_config_sha256(config: Any) -> str:
    """sha256 of `recorded_config` as canonical JSON: a run's identity, wherever its directory is."""
    return canonical_sha256(recorded_config(config))


def content_name(records: list[dict[str, Any]]) -> str:
    """Files named by what they hold, not where they lie: `sha256:` of their file records (path relative
    to their own root, bytes, sha256) sorted by path. How a manifest records an input path."""
    return "sha256:" + canonical_sha256(sorted(records, key=lambda r: r["path"]))


def recorded_config(config: Any) -> dict[str, Any]:
    """A stage config as a manifest records it: resolved, but without `run.dir`/`run.overwrite`.

    The manifest sits in run.dir, so recording it would only make identical builds in two directories
    differ; every other value is kept. Stages whose manifests promise no absolute path replace their
    input paths with `content_name`s (curate, tokenize).
    """
    data = config.to_dict()
    run = dict(data.get("run") or {})
    run.pop("dir", None)
    run.pop("overwrite", None)
    data["run"] = run
    return data
