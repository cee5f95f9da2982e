"""The contract between a stage and the `atom` CLI (and SLURM launchers).

A stage is a config model plus two functions: `plan` says what would run (for `--dry-run`, touching
nothing) and `run` does it; `inputs` names the paths it reads, so a finished run is reused only while
they are unchanged (see `fingerprint.py`). Stages stay plain libraries: the CLI only looks them up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ConfigModel


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config_cls: type[ConfigModel]
    plan: Callable[[Any], list[str]]
    run: Callable[[Any], Any]
    inputs: Callable[[Any], Mapping[str, str | Path]] | None = None  # None: reads no files
