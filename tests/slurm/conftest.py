"""Fixtures shared by the SLURM tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory) -> Iterator[Path]:
    """A private `atom jobs` registry per test module (ATOM_JOBS_FILE), so the user's is untouched."""
    path = tmp_path_factory.mktemp("registry") / "jobs.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATOM_JOBS_FILE", str(path))
        yield path
