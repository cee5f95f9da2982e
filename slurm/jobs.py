"""`atom jobs`: this project's SLURM jobs (those `atom submit` recorded), their state, logs, cancel.

State comes from squeue while SLURM still knows the job, else from the job's last line in
`run.dir/slurm/attempts.tsv` (written by the job itself; works without accounting/sacct).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from core.config import ConfigError
from slurm.submit import registry_path

FINAL_STATES = {"completed": "COMPLETED", "requeue-limit": "FAILED (requeue limit)",
                "failure-limit": "FAILED", "gave-up": "FAILED (restart limit)", "user-error": "FAILED (user error)"}


def records() -> list[dict]:
    path = registry_path()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find(job_id: str) -> dict:
    for record in reversed(records()):
        if record["job_id"] == job_id:
            return record
    raise ConfigError(f"job {job_id} was not submitted with `atom submit` here ({registry_path()})")


def squeue_states() -> dict[str, tuple[str, str, str]]:
    """job id -> (state, elapsed, reason/nodes) for every job squeue still shows."""
    if shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%M|%R"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        job, state, elapsed, reason = line.strip().split("|", 3)
        out[job] = (state, elapsed, reason)
    return out


def attempts(run_dir: Path, job_id: str) -> list[list[str]]:
    path = run_dir / "slurm" / "attempts.tsv"
    if not path.exists():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if len(r) >= 6 and r[1] == job_id]


def state_of(record: dict, live: dict[str, tuple[str, str, str]]) -> tuple[str, str]:
    rows = attempts(Path(record["run_dir"]), record["job_id"])
    requeues = sum(r[3] == "preempted" for r in rows)
    failures = sum(r[3] == "failed" for r in rows)
    counts = f"requeues={requeues} failures={failures}"
    if record["job_id"] in live:
        state, elapsed, reason = live[record["job_id"]]
        return state, f"{elapsed} {reason} {counts}"
    if rows:
        last = rows[-1]
        return FINAL_STATES.get(last[3], last[3].upper()), f"exit {last[4]} {counts} {last[5]}".strip()
    return "UNKNOWN", "no longer in squeue and no attempt recorded"


def list_jobs(limit: int = 20) -> str:
    live = squeue_states()
    rows = [("JOBID", "STAGE", "STATE", "RUN DIR", "DETAIL")]
    for record in records()[-limit:]:
        state, detail = state_of(record, live)
        rows.append((record["job_id"], record["stage"], state, record["run_dir"], detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
                     for r in rows)


def tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def logs(job_id: str, lines: int = 40, rank: int | None = None) -> str:
    """The batch log of the job, then the newest attempt's rank logs (all ranks, or one)."""
    record = find(job_id)
    slurm_dir = Path(record["run_dir"]) / "slurm" / "logs"
    parts = []
    batch = slurm_dir / f"job-{job_id}.out"
    if batch.exists():
        parts.append(f"==> {batch} <==\n{tail(batch, lines)}")
    attempts_dirs = sorted(slurm_dir.glob(f"{job_id}.*"), key=lambda p: int(p.suffix[1:]))
    if attempts_dirs:
        pattern = f"rank{rank}.log" if rank is not None else "rank*.log"
        for path in sorted(attempts_dirs[-1].glob(pattern)):
            parts.append(f"==> {path} <==\n{tail(path, lines)}")
    return "\n\n".join(parts) if parts else f"no logs yet for job {job_id} (in {slurm_dir})"


def cancel(job_id: str) -> str:
    find(job_id)
    proc = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ConfigError(f"scancel {job_id} failed: {proc.stderr.strip()}")
    return f"cancelled job {job_id}"
