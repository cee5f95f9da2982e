"""Tests against the real two-node local SLURM cluster (slurm/local_cluster.sh)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

TIMEOUT = 120  # seconds, for every SLURM client call


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _node_states() -> dict[str, str]:
    out = _run(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _sbatch_wait(script: Path, *args: str, cwd: Path) -> str:
    """Submit ``script`` with ``sbatch --wait`` and return the job id; asserts job success."""
    proc = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--time=2", *args, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
    )
    out_files = "\n".join(f"--- {p.name}:\n{p.read_text()}" for p in sorted(cwd.glob("slurm-*.out")))
    assert proc.returncode == 0, (
        f"sbatch --wait exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{out_files}"
    )
    return proc.stdout.strip().split(";")[0]


@pytest.mark.slurm
def test_sinfo_two_idle_nodes(slurm_cluster):
    # other tests sharing the session cluster may just have finished: allow a short drain
    deadline = time.monotonic() + 30
    states = _node_states()
    while set(states.values()) != {"idle"} and time.monotonic() < deadline:
        time.sleep(1)
        states = _node_states()
    assert states == {"n1": "idle", "n2": "idle"}, states


@pytest.mark.slurm
def test_sbatch_wait_batch_job(slurm_cluster, tmp_path):
    result = tmp_path / "result.txt"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        f"out={str(result)!r}\n"
        'hostname > "$out"\n'
        'echo "$SLURM_JOB_NODELIST" >> "$out"\n'
        'echo "$(( 6 * 7 ))" >> "$out"\n'
    )
    job_id = _sbatch_wait(script, "-J", "atom-test-batch", "-o", str(tmp_path / "slurm-%j.out"), cwd=tmp_path)
    assert job_id.isdigit(), job_id

    lines = result.read_text().split()
    assert len(lines) == 3, lines
    host, nodelist, value = lines
    # both nodes are this machine: the job sees this machine's hostname
    assert host == socket.gethostname().split(".")[0]
    assert nodelist in {"n1", "n2"}
    assert value == "42"


@pytest.mark.slurm
def test_two_node_job_runs_one_task_per_node(slurm_cluster, tmp_path):
    script = tmp_path / "job2.sh"
    script.write_text(
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        f"cd {str(tmp_path)!r}\n"
        "srun bash -c 'echo \"$SLURMD_NODENAME $SLURM_PROCID $SLURM_NODEID\" > task.$SLURM_PROCID.txt'\n"
    )
    _sbatch_wait(
        script,
        "-J",
        "atom-test-2node",
        "-N",
        "2",
        "--ntasks-per-node=1",
        "-o",
        str(tmp_path / "slurm-%j.out"),
        cwd=tmp_path,
    )

    task_files = sorted(tmp_path.glob("task.*.txt"))
    assert [p.name for p in task_files] == ["task.0.txt", "task.1.txt"]
    records = [p.read_text().split() for p in task_files]
    nodes = {r[0] for r in records}
    assert nodes == {"n1", "n2"}, records
    assert {r[2] for r in records} == {"0", "1"}, records  # SLURM_NODEID
