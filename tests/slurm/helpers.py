"""Helpers for the `atom submit` tests: run the CLI, wait for a job, read its attempts and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
ATOM = [sys.executable, "-m", "atom"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
FINAL_OUTCOMES = {"completed", "requeue-limit", "failure-limit", "gave-up", "user-error"}
# Hostile characters in a path: spaces, both quotes, $(), ;, a backtick, a glob and a '#' (sbatch comment).
HOSTILE = "a b'c\"$(touch PWNED);d`id`*#e"


def atom(*args: str, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run([*ATOM, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def submit(config: Path, stage: str, cwd: Path, *args: str) -> str:
    proc = atom("submit", str(config), "--stage", stage, "--profile", "local", "--parsable", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().splitlines()[-1]
    assert job.isdigit(), proc.stdout
    return job


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60).stdout
    for word in out.split():
        if word.startswith(f"{field}="):
            return word.split("=", 1)[1]
    return "UNKNOWN"


def job_state(job: str) -> str:
    return job_field(job, "JobState")


def attempts(run_dir: Path, job: str) -> list[list[str]]:
    path = run_dir / "slurm" / "attempts.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r[1] == job]


def wait_done(job: str, run_dir: Path, timeout: float = 240) -> str:
    """Wait for a terminal SLURM state whose attempt line is final; return the state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job)
        rows = attempts(run_dir, job)
        if state in TERMINAL and rows and rows[-1][3] in FINAL_OUTCOMES:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} not done after {timeout}s: {job_state(job)}\n{job_log(run_dir, job)}")


def wait_for(predicate, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def steps_done(run_dir: Path) -> int:
    path = run_dir / "train_tokens.jsonl"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def job_log(run_dir: Path, job: str) -> str:
    logs = run_dir / "slurm" / "logs"
    parts = [f"--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.rglob("*"))
             if p.is_file() and p.name.startswith(("job-", "rank", "node"))] if logs.exists() else []
    return "\n".join(parts)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from pretrain.checkpoint import list_checkpoints

    ckpt = list_checkpoints(run_dir / "checkpoints")[0]
    out = run_dir.parent / f"{run_dir.name}-final.pt"
    dcp_to_torch_save(ckpt.path / "dcp", out)
    return torch.load(out, weights_only=False)["app"]["model"]
