"""`atom submit CONFIG --stage STAGE --profile PROFILE`: validate everything here, render, sbatch.

What is checked before anything is queued: the stage config (same validation as running the stage),
the profile (keys, GPUs vs the node, nodes >= 1), the cluster (sbatch on PATH, partition exists, its
GPUs), the venv's Python, and that the run directory can be claimed for this config.

Files kept in `run.dir/slurm/`: `config.yaml` (the resolved config the job runs, `--set` applied),
`job.sbatch` (resubmit by hand with `sbatch`), `logs/` (batch log per job, per-attempt rank logs),
`attempts.tsv` (one line per attempt), `jobs.txt` (job ids submitted for this run).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config import ConfigError, ConfigModel, StageConfig, load_config
from slurm.profile import ClusterProfile, check_profile, load_profile, require_slurm_commands
from slurm.quoting import shell_quote
from slurm.script import TORCHRUN_STAGES, JobSpec, job_name, render


def registry_path() -> Path:
    """Where `atom submit` records jobs for `atom jobs` (override with ATOM_JOBS_FILE)."""
    if os.environ.get("ATOM_JOBS_FILE"):
        return Path(os.environ["ATOM_JOBS_FILE"])
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "atom" / "jobs.jsonl"


@dataclass
class Submission:
    script: str
    script_path: Path
    job_id: str | None  # None for a dry run


def _data_stage_dict(config: dict[str, Any], profile: ClusterProfile) -> dict[str, Any]:
    """Curation with `executor.kind: slurm`: the job drives datatrove's SlurmPipelineExecutor (job arrays,
    one per phase, chained with dependencies); the profile fills in where those arrays run."""
    executor = config.get("executor") or {}
    if executor.get("kind") != "slurm":
        return config
    s = executor.setdefault("slurm", {})
    if profile.partition:
        s["partition"] = profile.partition
    if profile.qos:
        s["qos"] = profile.qos
    args = dict(s.get("sbatch_args") or {})
    if profile.account:
        args["account"] = profile.account
    if profile.constraint:
        args["constraint"] = profile.constraint
    s["sbatch_args"] = args
    activate = str(Path(profile.python_path()).parent / "activate")
    s["env_command"] = "; ".join([*profile.setup, f"source {shell_quote(activate)}"])
    return config


def prepare(config_cls: type[StageConfig], config_path: str, stage: str, profile: ClusterProfile,
            overrides: list[str]) -> tuple[StageConfig, Path, dict[str, Any]]:
    config = load_config(config_cls, config_path, overrides)
    run_dir = Path(config.run.dir)
    if not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    data = config.to_dict()
    if stage == "data":
        data = _data_stage_dict(data, profile)
        config = config_cls.model_validate(data)
    return config, run_dir, data


def claim_if_fresh(run_dir: Path, stage: str, config: ConfigModel) -> None:
    """Write the run's config.yaml now, so that the `slurm/` folder does not make the stage refuse the
    directory as "not a run directory". A directory that already holds a run is left to the stage's own
    resume check inside the job; one that holds something else is refused here, at submit time."""
    from core.rundir import CONFIG_FILE, RunDir

    if (run_dir / CONFIG_FILE).exists():
        return
    if run_dir.exists() and any(p.name != "slurm" for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: directory exists and is not a run directory of atom; "
                          "choose another run.dir")
    RunDir.claim(run_dir, stage, config)


def submit(stage: str, config_cls: type[StageConfig], config_path: str, profile_name: str,
           overrides: list[str], profile_overrides: list[str], after: list[str], dry_run: bool,
           argv: list[str]) -> Submission:
    profile = load_profile(profile_name, profile_overrides)
    config, run_dir, data = prepare(config_cls, config_path, stage, profile, overrides)
    slurm_dir = run_dir / "slurm"
    spec = JobSpec(stage=stage, config=slurm_dir / "config.yaml", run_dir=run_dir, workdir=Path.cwd(),
                   job_name=job_name(profile.job_name_prefix, stage, run_dir))
    for job in after:
        if not job.isdigit():
            raise ConfigError(f"--after {job!r}: expected a SLURM job id")
    if not dry_run:
        require_slurm_commands()
    check_profile(profile, multi_node_ok=stage in TORCHRUN_STAGES)
    script = render(profile, spec, ["atom", *argv])
    script_path = slurm_dir / "job.sbatch"
    if dry_run:
        return Submission(script, script_path, None)

    claim_if_fresh(run_dir, stage, config)
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    spec.config.write_text(f"# resolved by atom submit for stage {stage}; the job runs exactly this\n"
                           + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    script_path.write_text(script)
    cmd = ["sbatch", "--parsable"]
    if after:
        cmd.append("--dependency=afterok:" + ":".join(after))
    proc = subprocess.run([*cmd, str(script_path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ConfigError(f"sbatch refused the job: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    record = {"job_id": job_id, "stage": stage, "run_dir": str(run_dir), "script": str(script_path),
              "profile": profile_name, "after": after, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(slurm_dir / "jobs.txt", "a") as fh:
        fh.write(f"{job_id}\n")
    registry = registry_path()
    registry.parent.mkdir(parents=True, exist_ok=True)
    with open(registry, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return Submission(script, script_path, job_id)

