"""The contract between a stage and the `atom` CLI (and SLURM launchers).

A stage is a config model plus two functions: `plan` says what would run (for `--dry-run`, touching
nothing) and `run` does it. Stages stay plain libraries: the CLI only looks them up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from data_pipeline.config import ConfigModel


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config_cls: type[ConfigModel]
    plan: Callable[[Any], list[str]]
    run: Callable[[Any], Any]
