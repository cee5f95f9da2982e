"""`atom quickstart`: run the whole pipeline on the bundled corpus, one stage config after another.

The quickstart is itself a config: an ordered list of (stage, stage config, overrides). Each stage
writes its own run directory, so a finished stage can be inspected, and a rerun resumes or refuses
exactly as the stage would on its own.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from data_pipeline.config import ConfigError, ConfigModel, load_config
from data_pipeline.stage import Stage

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"


class QuickstartStep(ConfigModel):
    stage: str
    config: str
    overrides: list[str] = Field(default_factory=list)


class QuickstartConfig(ConfigModel):
    steps: list[QuickstartStep]


def _resolve(step: QuickstartStep) -> tuple[Stage, ConfigModel]:
    from atom.cli import STAGES, load_stage  # the CLI's registry is the single list of stages

    if step.stage not in STAGES or step.stage == "quickstart":
        raise ConfigError(f"quickstart: unknown stage '{step.stage}' (known: {', '.join(STAGES)})")
    stage = load_stage(step.stage)
    path = Path(step.config)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    return stage, load_config(stage.config_cls, path, step.overrides)


def plan(config: QuickstartConfig) -> list[str]:
    lines = []
    for step in config.steps:
        stage, stage_config = _resolve(step)
        lines += [f"[{step.stage}] {line}" for line in stage.plan(stage_config)]
    return lines


def run(config: QuickstartConfig) -> None:
    resolved = [(step, *_resolve(step)) for step in config.steps]  # every config is checked first
    total = time.perf_counter()
    for i, (step, stage, stage_config) in enumerate(resolved, 1):
        print(f"==> [{i}/{len(resolved)}] atom {step.stage} {step.config}", flush=True)
        start = time.perf_counter()
        stage.run(stage_config)
        print(f"==> [{i}/{len(resolved)}] {step.stage} done in {time.perf_counter() - start:.1f}s", flush=True)
    print(f"==> quickstart finished {len(resolved)} stages in {time.perf_counter() - total:.1f}s")


STAGE = Stage("quickstart", "run the whole pipeline on the bundled corpus", QuickstartConfig, plan, run)
