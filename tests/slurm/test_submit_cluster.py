"""`atom submit` against the real two-node local SLURM cluster (slurm/local_cluster.sh).

One module-scoped chain serves several tests: a tokenize job, then a pretrain job on both nodes that
depends on it (afterok), both with run directories whose names are hostile to a shell. Preemption and
the requeue limit each run their own single-node pretrain job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from core.config import RunConfig
from data_pipeline.tokens.tokenize import TokenizeConfig
from pretrain.train_manifest import read_train_manifest
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain
from tests.slurm.helpers import (
    HOSTILE,
    REPO,
    atom,
    attempts,
    final_weights,
    job_field,
    job_log,
    losses,
    steps_done,
    submit,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Curated run, tokenizer and token dataset under one root (built locally, ~10-20 s)."""
    return build_token_dataset(tmp_path_factory.mktemp("slurm-data"))


def write(path: Path, config) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


@pytest.fixture(scope="module")
def chain(slurm_cluster, dataset: Path, jobs_file: Path, tmp_path_factory) -> dict:
    """tokenize (SLURM) -> pretrain on 2 nodes (SLURM, --after the tokenize job); both run dirs hostile."""
    work = tmp_path_factory.mktemp("chain")
    root = dataset.parent
    tokens_dir = work / f"tokens {HOSTILE}"
    run_dir = work / f"pretrain {HOSTILE}"
    tokenize = TokenizeConfig(run=RunConfig(dir=str(tokens_dir)), input=str(root / "curated"),
                              tokenizer=str(root / "tokenizer"), shard_tokens=20_000)
    tok_cfg = write(work / "tokenize.yaml", tokenize)
    pre = tiny_pretrain(tokens_dir, run_dir, steps=12, checkpoint_interval=4)
    pre.parallel.backend = "fsdp2"  # ranks on both nodes shard one model and reduce gradients
    pre_cfg = write(work / "pretrain.yaml", pre)
    started = time.monotonic()
    # The tokenize job is held until the pretrain job is queued behind it, so the dependency is observable.
    tok_job = submit(tok_cfg, "tokenize", work, "--profile-set", "sbatch_extra=[--hold]")
    pre_job = submit(pre_cfg, "pretrain", work, "--nodes", "2", "--after", tok_job)
    pending = job_field(pre_job, "JobState"), job_field(pre_job, "Reason")
    subprocess.run(["scontrol", "release", tok_job], check=True, timeout=60)
    tok_state = wait_done(tok_job, tokens_dir)
    pre_state = wait_done(pre_job, run_dir)
    return {"work": work, "tokens": tokens_dir, "run": run_dir, "tok_job": tok_job, "pre_job": pre_job,
            "pending": pending, "tok_state": tok_state, "pre_state": pre_state, "config": pre_cfg,
            "seconds": time.monotonic() - started}


def test_chain_runs_in_order(chain):
    assert chain["pending"] == ("PENDING", "Dependency")  # queued behind the tokenize job
    assert chain["tok_state"] == "COMPLETED", job_log(chain["tokens"], chain["tok_job"])
    assert chain["pre_state"] == "COMPLETED", job_log(chain["run"], chain["pre_job"])
    assert job_field(chain["pre_job"], "StartTime") >= job_field(chain["tok_job"], "EndTime")
    assert (chain["tokens"] / "manifest.json").exists()


def test_two_node_pretrain_uses_both_nodes_and_matches_one_process(chain, tmp_path):
    run = chain["run"]
    log = (run / "slurm" / "logs" / f"job-{chain['pre_job']}.out").read_text()
    assert "on n[1-2], rendezvous n1:" in log, log
    node_logs = sorted(p.name for p in (run / "slurm" / "logs" / f"{chain['pre_job']}.0").iterdir())
    assert node_logs == ["node0.out", "node1.out", "rank0.exit", "rank0.log", "rank1.exit", "rank1.log"]
    state = yaml.safe_load((run / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 12
    weights = final_weights(run)  # the final checkpoint loads
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    # The same config under a local 2-rank torchrun (one machine, no SLURM): the same loss curve.
    local = tmp_path / "local"
    cfg = yaml.safe_load(chain["config"].read_text())
    cfg["run"]["dir"] = str(local)
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "atom", "pretrain", str(tmp_path / "local.yaml")], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = losses(run), losses(local)
    assert len(a) == len(b) == 6
    assert a == b, (a, b)


def test_eval_job_scores_as_one_process(chain, tmp_path):
    """`atom submit eval` of the chain's checkpoint (hostile paths) gives the bytes `atom eval` gives here."""
    work = chain["work"]
    eval_dir = work / f"eval {HOSTILE}"
    config = {"run": {"dir": str(eval_dir)}, "target": str(chain["run"]), "batch_size": 4, "progress": False,
              "tasks": [{"name": "arc_easy:rc_0shot", "limit": 6}, {"name": "mmlu:mc_0shot", "limit": 4},
                        {"name": "gsm8k:cot_8shot", "limit": 1, "max_new_tokens": 4}]}
    path = work / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    job = submit(path, "eval", work)
    assert wait_done(job, eval_dir) == "COMPLETED", job_log(eval_dir, job)
    local = tmp_path / "local"
    proc = atom("eval", str(path), "--set", f"run.dir={local}", cwd=work, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ["results.json", "items/arc_easy_rc_0shot.jsonl", "items/mmlu_mc_0shot.jsonl",
                 "items/gsm8k_cot_8shot.jsonl"]:
        assert (eval_dir / name).read_bytes() == (local / name).read_bytes(), name
    assert "arc_easy:rc_0shot" in json.loads((eval_dir / "results.json").read_text())["tasks"]


def test_hostile_paths_pass_through_literally(chain):
    for run_dir in (chain["tokens"], chain["run"]):
        assert run_dir.is_dir() and (run_dir / "slurm" / "job.sbatch").exists()
        job = (run_dir / "slurm" / "jobs.txt").read_text().split()[-1]
        assert (run_dir / "slurm" / "logs" / f"job-{job}.out").exists()  # sbatch read the escaped #SBATCH path
        assert attempts(run_dir, job)[-1][3] == "completed"
    assert not list(chain["work"].rglob("PWNED")) and not (REPO / "PWNED").exists()
    assert not list(Path("/tmp").glob("PWNED"))


def test_atom_jobs_lists_and_tails(chain):
    proc = atom("jobs", cwd=chain["work"])
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "COMPLETED" in lines[chain["pre_job"]] and "pretrain" in lines[chain["pre_job"]]
    assert "tokenize" in lines[chain["tok_job"]]
    logs = atom("jobs", "logs", chain["pre_job"], "-n", "5", cwd=chain["work"])
    assert logs.returncode == 0 and "atom-job: completed" in logs.stdout and "rank1.log" in logs.stdout


@pytest.fixture(scope="module")
def preempted(slurm_cluster, dataset: Path, jobs_file: Path, tmp_path_factory) -> dict:
    """One single-node pretrain job with max_requeues=1, signalled twice, then resubmitted by hand.

    attempt 0: warning signal to the batch shell -> checkpoint -> requeue (1 of 1); attempt 1: resumes,
    USR1 to every step process -> checkpoint -> requeue limit -> FAILED; then
    `sbatch run.dir/slurm/job.sbatch` by hand -> resumes and finishes. Meanwhile an uninterrupted local
    run of the same config (one process both ways) runs beside it.
    """
    work = tmp_path_factory.mktemp("preempt")
    steps = 100
    run_dir, whole = work / "preempted", work / "whole"
    cfg = write(work / "pre.yaml", tiny_pretrain(dataset, run_dir, steps=steps, checkpoint_interval=50))
    cfg_whole = write(work / "whole.yaml", tiny_pretrain(dataset, whole, steps=steps, checkpoint_interval=50))
    reference = subprocess.Popen([sys.executable, "-m", "atom", "pretrain", str(cfg_whole)], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    job = submit(cfg, "pretrain", work, "--profile-set", "requeue.max_requeues=1")
    logs = run_dir / "slurm" / "logs"
    wait_for(lambda: steps_done(run_dir) >= 3, "attempt 0 training", timeout=180)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=60)
    wait_for(lambda: (logs / f"{job}.1").exists() and len(attempts(run_dir, job)) == 1, "requeue", timeout=180)
    stopped = int((run_dir / "logs" / "pretrain.log").read_text().split("stopped at step ")[1].split()[0])
    wait_for(lambda: "resumed from" in (run_dir / "logs" / "pretrain.log").read_text()
             and steps_done(run_dir) >= stopped + 2, "attempt 1 training", timeout=180)
    # this time to every process of the job's steps (torchrun's agent included), not the batch shell
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=60)
    state = wait_done(job, run_dir, timeout=180)
    listed = atom("jobs", cwd=work).stdout
    steps_at_limit = steps_done(run_dir)
    by_hand = subprocess.run(["sbatch", "--parsable", str(run_dir / "slurm" / "job.sbatch")], cwd=work,
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    final_state = wait_done(by_hand, run_dir, timeout=240)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    return {"job": job, "state": state, "run": run_dir, "whole": whole, "steps": steps, "listed": listed,
            "stopped": stopped, "steps_at_limit": steps_at_limit, "by_hand": by_hand, "final_state": final_state}


def test_preemption_checkpoints_requeues_and_equals_uninterrupted(preempted):
    run_dir, job = preempted["run"], preempted["job"]
    assert [r[3] for r in attempts(run_dir, job)][:1] == ["preempted"]
    log = (run_dir / "logs" / "pretrain.log").read_text()
    stopped = preempted["stopped"]
    assert 3 <= stopped < 50, log  # checkpointed mid-run on the signal, not at an interval checkpoint
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped:08d}'} at step {stopped}" in log
    assert preempted["final_state"] == "COMPLETED", job_log(run_dir, preempted["by_hand"])
    assert log.count("resumed from") == 2 and log.count("stopped at step") == 2
    wa, wb = final_weights(preempted["whole"]), final_weights(run_dir)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-equal
    assert losses(preempted["whole"]) == losses(run_dir)
    _, records = read_train_manifest(run_dir / "train_tokens.jsonl")
    assert [r["batch"] for r in records] == list(range(preempted["steps"]))  # no token range consumed twice


def test_requeue_limit_is_respected(preempted):
    run_dir, job = preempted["run"], preempted["job"]
    assert preempted["state"] == "FAILED", job_log(run_dir, job)
    rows = attempts(run_dir, job)
    assert [r[3] for r in rows] == ["preempted", "requeue-limit"], rows
    assert rows[-1][4] != "0" and "max_requeues=1 reached" in rows[-1][5]
    assert preempted["steps_at_limit"] < preempted["steps"]  # stopped for good (with a checkpoint)
    assert "FAILED (requeue limit)" in next(line for line in preempted["listed"].splitlines() if line.startswith(job))
    # the kept script resubmits by hand and continues from the checkpoint (same run, a new job id)
    assert [r[3] for r in attempts(run_dir, preempted["by_hand"])] == ["completed"]


def test_user_error_is_not_resubmitted(slurm_cluster, jobs_file: Path, tmp_path: Path):
    """A stage that exits 2 (its input does not exist) fails at once: retrying cannot fix a bad input."""
    run_dir = tmp_path / "failing"
    cfg = write(tmp_path / "tok.yaml", TokenizeConfig(run=RunConfig(dir=str(run_dir)), input=str(tmp_path / "gone"),
                                                      tokenizer=str(tmp_path / "gone-too")))
    job = submit(cfg, "tokenize", tmp_path)
    assert wait_done(job, run_dir, timeout=180) == "FAILED", job_log(run_dir, job)
    assert [(r[2], r[3], r[4]) for r in attempts(run_dir, job)] == [("0", "user-error", "2")]


def _rank_pids(config: Path) -> list[int]:
    """Training processes (not the torchrun agent, not the wrapper) whose command line names `config`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"atom" in argv and str(config).encode() in argv and b"-c" not in argv:
            pids.append(int(proc.name))
    return pids


def test_killed_rank_is_resubmitted_from_checkpoint_up_to_max_failures(slurm_cluster, dataset: Path,
                                                                       jobs_file: Path, tmp_path: Path):
    """A rank killed mid-run (a node dying looks like this to the job): resubmitted once from the last
    checkpoint (max_failures=1), finishes; the manifest shows every batch exactly once."""
    steps = 60
    run_dir = tmp_path / "killed"
    cfg = write(tmp_path / "k.yaml", tiny_pretrain(dataset, run_dir, steps=steps, checkpoint_interval=10))
    job = submit(cfg, "pretrain", tmp_path)
    frozen = run_dir / "slurm" / "config.yaml"
    wait_for(lambda: steps_done(run_dir) >= 12 and _rank_pids(frozen), "a checkpoint, then training", timeout=180)
    for pid in _rank_pids(frozen):
        os.kill(pid, 9)
    assert wait_done(job, run_dir, timeout=240) == "COMPLETED", job_log(run_dir, job)
    rows = attempts(run_dir, job)
    assert [r[3] for r in rows] == ["failed", "completed"], rows
    assert "137" in rows[0][5]  # the rank's exit code (SIGKILL) is recorded
    assert "resumed from" in (run_dir / "logs" / "pretrain.log").read_text()
    _, records = read_train_manifest(run_dir / "train_tokens.jsonl")
    assert [r["batch"] for r in records] == list(range(steps))
