"""`atom quickstart`: the whole pipeline on the bundled corpus, one step after another.

The quickstart is itself a config: an ordered list of steps, each a stage with its own config file
(`configs/quickstart/*.yaml`), a release of a run, or an audit. Each stage writes its own run
directory, so a finished stage can be inspected, and a rerun resumes or refuses exactly as the stage
would on its own. It ends by printing where the release is and a few samples generated from it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pydantic import Field

from core.config import ConfigError, ConfigModel, StageConfig, load_config
from core.fingerprint import run_fingerprint
from core.rundir import CONFIG_FILE, RunDir, config_digest, recorded_config_digest
from core.stage import Stage

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"


class StageStep(ConfigModel):
    stage: str
    config: str
    overrides: list[str] = Field(default_factory=list)


class ReleaseStep(ConfigModel):
    release: str  # the run directory to release
    out: str


class AuditStep(ConfigModel):
    audit: str  # a dataset, mixture or release directory


class QuickstartConfig(ConfigModel):
    steps: list[StageStep | ReleaseStep | AuditStep]
    samples: list[str] = Field(default_factory=list)  # prompts to generate from the release at the end


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def _resolve(step: StageStep) -> tuple[Stage, StageConfig]:
    from atom.cli import STAGES, load_stage  # the CLI's registry is the single list of stages

    if step.stage not in STAGES or step.stage == "quickstart":
        raise ConfigError(f"quickstart: unknown stage '{step.stage}' (known: {', '.join(STAGES)})")
    stage = load_stage(step.stage)
    config = load_config(stage.config_cls, _repo_path(step.config), step.overrides)
    if not isinstance(config, StageConfig):  # every stage but the quickstart itself has `run:`
        raise ConfigError(f"quickstart: stage '{step.stage}' has no run directory to write")
    return stage, config


def _describe(step: StageStep | ReleaseStep | AuditStep) -> str:
    if isinstance(step, StageStep):
        return f"atom {step.stage} {step.config}"
    if isinstance(step, ReleaseStep):
        return f"atom release {step.release} --out {step.out}"
    return f"atom audit {step.audit}"


def plan(config: QuickstartConfig) -> list[str]:
    lines = []
    for step in config.steps:
        if isinstance(step, StageStep):
            stage, stage_config = _resolve(step)
            lines.append(_describe(step))
            try:
                lines += [f"    {line}" for line in stage.plan(stage_config)]
            except ConfigError as exc:  # its input is made by an earlier step
                lines.append(f"    (planned once the earlier steps have run: {exc})")
        else:
            lines.append(_describe(step))
    return lines


def reuse_verdict(stage: Stage, stage_config: StageConfig) -> tuple[bool, str]:
    """Whether a stage's earlier run can be reused as it is, and why not.

    It can when its directory holds this very config, its final record (`summary.json` for training,
    `manifest.json` for data stages), and the inputs and code it finished with (`inputs.json`): a rerun
    then reuses it untouched, so the manifests a trained model pinned stay byte-identical.
    """
    run_dir = RunDir(Path(stage_config.run.dir), stage.name)
    saved = run_dir.file(CONFIG_FILE)
    if not saved.is_file():
        return False, "not run yet"
    if recorded_config_digest(saved.read_text(encoding="utf-8")) != config_digest(stage_config):
        return False, "its config changed"
    if not run_dir.finished():
        return False, "not finished"
    try:
        inputs = stage.inputs(stage_config) if stage.inputs else {}
    except ConfigError as exc:
        return False, str(exc)
    stale = run_dir.stale_reasons(run_fingerprint(inputs))
    return (not stale), "; ".join(stale)


def _run_step(step: StageStep | ReleaseStep | AuditStep) -> None:
    if isinstance(step, StageStep):
        stage, stage_config = _resolve(step)
        reusable, why = reuse_verdict(stage, stage_config)
        if reusable:
            print(f"    finished earlier in {stage_config.run.dir}: reused", flush=True)
            return
        if RunDir(Path(stage_config.run.dir), stage.name).finished():
            # The quickstart owns its run directories: a stale result is redone from scratch.
            print(f"    finished earlier in {stage_config.run.dir}, but {why}: redoing it", flush=True)
            shutil.rmtree(stage_config.run.dir)
        stage.run(stage_config)
    elif isinstance(step, ReleaseStep):
        from release.build import build_release

        build_release(step.release, step.out)
    else:
        from release.audit import audit

        report = audit(step.audit)
        print(report.render(verbose=False))
        if not report.ok:
            raise SystemExit(f"quickstart: audit of {step.audit} failed")


def _print_evals(config: QuickstartConfig) -> None:
    for step in config.steps:
        if isinstance(step, StageStep) and step.stage == "midtrain":
            _, cfg = _resolve(step)
            evals = json.loads((Path(cfg.run.dir) / "evals.json").read_text())
            for when in ("before", "after"):
                e = evals[when]
                print(f"    {when:>6}: held-out loss {e['val_loss'].get('val/loss', float('nan')):.3f}, "
                      f"reasoning accuracy {e['reasoning']['accuracy']:.2f} on {e['reasoning']['problems']} "
                      f"problems, passkey {e['passkey']}")


def _print_samples(release: str, prompts: list[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(release)
    model = AutoModelForCausalLM.from_pretrained(release)
    torch.manual_seed(0)
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)
        print(f"    {prompt!r} -> {text!r}")


def run(config: QuickstartConfig) -> None:
    for step in config.steps:  # every config is checked before the first step runs
        if isinstance(step, StageStep):
            _resolve(step)
    total = time.perf_counter()
    n = len(config.steps)
    for i, step in enumerate(config.steps, 1):
        print(f"==> [{i}/{n}] {_describe(step)}", flush=True)
        start = time.perf_counter()
        _run_step(step)
        print(f"==> [{i}/{n}] done in {time.perf_counter() - start:.1f}s", flush=True)
    print(f"==> quickstart finished {n} steps in {time.perf_counter() - total:.1f}s")
    _print_evals(config)
    releases = [s.out for s in config.steps if isinstance(s, ReleaseStep)]
    if releases:
        print(f"==> release: {releases[-1]}  (verify: atom audit {releases[-1]})")
        if config.samples:
            _print_samples(releases[-1], config.samples)


STAGE = Stage("quickstart", "run the whole pipeline on the bundled corpus", QuickstartConfig, plan, run)
