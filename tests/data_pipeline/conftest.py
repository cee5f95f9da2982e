"""Fixtures for the curation tests: the bundled real sample, run once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.curate.pipeline import run
from tests.data_pipeline.curate_helpers import sample_config


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """The full default pipeline on the bundled sample (local executor), once per session."""
    run_dir = tmp_path_factory.mktemp("curate") / "sample"
    run(sample_config(run_dir))
    return run_dir
