"""Helpers for the curation tests (shared by conftest.py and the test modules)."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import load_config
from data_pipeline.curate import CurateConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CONFIG = REPO_ROOT / "configs" / "data" / "sample.yaml"


def sample_config(run_dir: Path, *overrides: str) -> CurateConfig:
    """configs/data/sample.yaml with paths made absolute (tests run from any directory)."""
    config = load_config(CurateConfig, SAMPLE_CONFIG, [f"run.dir={run_dir}", *overrides])
    for source in config.sources:
        source.path = str((REPO_ROOT / source.path).resolve())
    return config


def read_manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def read_excluded(run_dir: Path, stage: str) -> list[dict]:
    rows = []
    for path in sorted((run_dir / "excluded" / stage).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return rows
