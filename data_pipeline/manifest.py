"""Shared pieces of the open manifests every stage writes.

Manifests are canonical JSON (see `rundir.write_json`): sorted keys, relative paths, no timestamps
inside what is hashed, so the same inputs and config give the same bytes.
"""

from __future__ import annotations

import hashlib
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
