"""Shared pytest fixtures for the atom test suite."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests run many small models, often several processes at once, on 2 cores: one intra-op thread each
# avoids oversubscription (which slows tiny ops ten-fold). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = REPO_ROOT / "slurm" / "local_cluster.sh"


def _cluster_unavailable(reason: str) -> None:
    """Fail in CI (where the cluster must work), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"local SLURM cluster unavailable: {reason}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """Start the two-node local SLURM test cluster (nodes n1, n2) and yield its state dir.

    Sets ``SLURM_CONF`` in ``os.environ`` for the session so that sbatch/srun/sinfo
    run from tests (and their subprocesses) talk to the private cluster.

    The cluster is deliberately NOT stopped at the end of the session: starting it
    again is idempotent and cheap, and CI's ``.ci/run`` stops it with a trap
    (``bash slurm/local_cluster.sh stop``). Stop it by hand the same way.
    """
    try:
        proc = subprocess.run(
            ["bash", str(LOCAL_CLUSTER), "start"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=540,  # may include an apt-get install of slurm-wlm + munge
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _cluster_unavailable(f"`local_cluster.sh start` did not complete: {exc}")
    if proc.returncode != 0:
        _cluster_unavailable(
            f"`local_cluster.sh start` exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )

    env_out = subprocess.run(
        ["bash", str(LOCAL_CLUSTER), "env"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    slurm_conf = None
    for line in env_out.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and words[1].startswith("SLURM_CONF="):
            slurm_conf = words[1].split("=", 1)[1]
    if env_out.returncode != 0 or not slurm_conf:
        _cluster_unavailable(f"`local_cluster.sh env` gave no SLURM_CONF: {env_out.stdout!r} {env_out.stderr!r}")

    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = slurm_conf
    try:
        yield Path(slurm_conf).parent
    finally:
        # restore the environment; the cluster itself keeps running (see docstring)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
