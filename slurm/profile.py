"""Cluster profiles: what a SLURM cluster needs to know about a job, as typed YAML (`configs/slurm/*.yaml`).

A profile is a `ConfigModel`, so it gets the same treatment as stage configs: `extends:`, dotted
overrides (`--profile-set nodes=2`), unknown keys named with a suggestion, one-line errors (exit 2).
`check_profile` then asks the cluster itself (sinfo) whether the partition exists and has the GPUs
the profile asks for, so a bad request fails at submit time rather than an hour later in the queue.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from core.config import ConfigError, ConfigModel, SlurmTime, load_config, slurm_time_seconds

PROFILE_DIR = Path(__file__).resolve().parent.parent / "configs" / "slurm"


class RequeueConfig(ConfigModel):
    """How often a job may come back: after preemption / time-limit warnings, and after failures."""

    max_requeues: int = Field(3, ge=0)  # preemptions (warning signal -> checkpoint -> requeue)
    max_failures: int = Field(1, ge=0)  # non-zero exits (a node died, NCCL hung): resubmit from the checkpoint
    warn_seconds: int = Field(300, ge=1)  # `--signal=B:USR1@warn_seconds` before the time limit


class ClusterProfile(ConfigModel):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    max_gpus_per_node: int | None = Field(None, ge=0)  # what one node has; None: not checked
    procs_per_node: int | None = Field(None, ge=1)  # training ranks per node; default gpus_per_node or 1
    cpus_per_task: int | None = Field(None, ge=1)  # per node task (torchrun and all its ranks)
    mem: str | None = None  # per node, e.g. "480G"; "0" = all of it
    time: SlurmTime = "01:00:00"
    constraint: str | None = None
    exclusive: bool = False
    job_name_prefix: str = "atom"
    sbatch_extra: list[str] = Field(default_factory=list)  # more `#SBATCH` options, e.g. "--reservation=x"
    # Shell lines run at the top of the job, before anything else (module loads, conda/venv activation).
    setup: list[str] = Field(default_factory=list)
    # Absolute path of the Python that runs every step; None: the interpreter running `atom submit`.
    python: str | None = None
    env: dict[str, str] = Field(default_factory=dict)  # exported in the job: NCCL_*, GLOO_SOCKET_IFNAME, ...
    rdzv_port: int | None = Field(None, gt=1024, lt=65536)  # None: 20000 + job id % 20000
    requeue: RequeueConfig = Field(default_factory=RequeueConfig)
    check_cluster: bool = True  # ask sinfo at submit time whether partition and GPUs exist

    @model_validator(mode="after")
    def _check(self) -> ClusterProfile:
        if self.max_gpus_per_node is not None and self.gpus_per_node > self.max_gpus_per_node:
            raise ValueError(f"gpus_per_node={self.gpus_per_node} but a node of this cluster has "
                             f"max_gpus_per_node={self.max_gpus_per_node}")
        if self.gpus_per_node and self.procs_per_node is not None and self.procs_per_node > self.gpus_per_node:
            raise ValueError(f"procs_per_node={self.procs_per_node} exceeds gpus_per_node={self.gpus_per_node}: "
                             "each training rank takes one GPU of its node")
        if self.requeue.warn_seconds >= slurm_time_seconds(self.time):
            raise ValueError(f"requeue.warn_seconds={self.requeue.warn_seconds} is not shorter than time={self.time}: "
                             "the warning signal would come before the job starts")
        for line in self.sbatch_extra:
            if not line.startswith("-"):
                raise ValueError(f"sbatch_extra entry {line!r} must be an sbatch option starting with '-'")
        for text in [*self.sbatch_extra, *(v for v in self.env.values())]:
            if "\n" in text or "\r" in text:
                raise ValueError(f"newline in {text!r}")
        return self

    @property
    def ranks_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1

    def python_path(self) -> str:
        return self.python or str(Path(sys.prefix) / "bin" / "python")


def resolve_profile_path(name: str) -> Path:
    """A profile by name (`local` -> configs/slurm/local.yaml) or by path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = PROFILE_DIR / f"{name}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown cluster profile '{name}' (known: {known}; or give a path to a YAML file)")
    return candidate


def load_profile(name: str, overrides: list[str] | None = None) -> ClusterProfile:
    return load_config(ClusterProfile, resolve_profile_path(name), overrides or [])


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`{' '.join(cmd)}` did not answer within 60 s: is slurmctld reachable?") from None
    if proc.returncode != 0:
        raise ConfigError(f"`{' '.join(cmd)}` failed: {_last_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def require_slurm_commands() -> None:
    for command in ("sbatch", "squeue", "scontrol"):
        if shutil.which(command) is None:
            raise ConfigError(f"'{command}' is not on PATH: run `atom submit` on a SLURM login node "
                              "(or load the slurm module), or use --dry-run to only render the script")


def check_profile(profile: ClusterProfile, multi_node_ok: bool) -> None:
    """Everything that can be known before queueing: paths, node counts, partition and GPUs (via sinfo)."""
    python = Path(profile.python_path())
    if not python.is_absolute():
        raise ConfigError(f"profile python: '{python}' must be an absolute path (steps may not have your PATH)")
    if not python.exists():
        raise ConfigError(f"profile python: '{python}' does not exist (is the venv path right?)")
    if profile.nodes > 1 and not multi_node_ok:
        raise ConfigError(f"nodes={profile.nodes}: this stage runs on one node; multi-node is for training stages")
    if not profile.check_cluster:
        return
    partitions: dict[str, dict[str, Any]] = {}  # name -> nodes, gres (set), default
    for line in _run(["sinfo", "-h", "-o", "%P|%D|%G"]).splitlines():
        name, count, gres = line.strip().split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        entry = partitions.setdefault(name, {"nodes": 0, "gres": set(), "default": default})
        entry["nodes"] += int(count)
        entry["gres"].add(gres)
    if profile.partition is None:
        chosen = [n for n, e in partitions.items() if e["default"]]
        if not chosen:
            raise ConfigError("profile sets no partition and the cluster has no default partition")
        partition = chosen[0]
    else:
        partition = profile.partition
        if partition not in partitions:
            raise ConfigError(f"unknown partition '{partition}' (this cluster has: {', '.join(sorted(partitions))})")
    info = partitions[partition]
    if profile.nodes > info["nodes"]:
        raise ConfigError(f"nodes={profile.nodes} but partition '{partition}' has {info['nodes']} node(s)")
    if profile.gpus_per_node:
        counts = [gpu_count(g) for g in info["gres"]]
        most = max(counts, default=0)
        if profile.gpus_per_node > most:
            raise ConfigError(f"gpus_per_node={profile.gpus_per_node} but nodes of partition '{partition}' "
                              f"have at most {most} GPU(s) (sinfo gres: {', '.join(sorted(info['gres']))})")


def gpu_count(gres: str) -> int:
    """GPUs in an sinfo %G string such as 'gpu:h100:8(S:0-1),shard:4' or '(null)'."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
