"""Run records (metrics.jsonl, train_tokens.jsonl, summary.json) of a killed and resumed run read like an
uninterrupted run's: evaluation leaves the logged expert load alone, a restart drops what its checkpoint does
not cover, and a run resumed at its end still reports the last step's figures.

A kill is simulated in-process (the step after `step` raises an exception no code catches, once everything
of `step` is written: where a SIGKILL between two steps leaves a run), or is a real SIGKILL that a training
process sends itself at a named point (`ATOM_KILL_AT`, see pretrain.checkpoint.kill_point): mid-save,
mid-write, after the final checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.checkpoint import COMPLETE, KILL_AT, list_checkpoints
from pretrain.metrics import read_jsonl, reproducible
from pretrain.model.config import MoEConfig
from pretrain.model.moe import MoE
from pretrain.stage import run as pretrain
from pretrain.trainer import Trainer
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain

REPO = Path(__file__).resolve().parents[2]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way out handles it."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("data"), max_modules=30)


def run_killed_after(cfg, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train `cfg` until `step` is complete, then die before the next step."""
    original = Trainer.train_step

    def train_step(self, batch, lr):
        if self.step == step:
            raise Killed(f"killed after step {step}")
        return original(self, batch, lr)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", train_step)
        with pytest.raises(Killed):
            pretrain(cfg)


def metrics(run_dir: Path) -> list[dict]:
    return [reproducible(r) for r in read_jsonl(run_dir / "metrics.jsonl")]


def manifest_lines(run_dir: Path) -> list[str]:
    return (run_dir / "train_tokens.jsonl").read_text().splitlines()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_an_eval_mode_forward_does_not_count_toward_the_expert_load():
    torch.manual_seed(0)
    moe = MoE(16, MoEConfig(n_experts=4, top_k=2, expert_hidden=8, bias_update_rate=0.01, score_func="sigmoid"))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(std=0.1)  # the experts' weights are allocated, not initialised, by the module
    moe(torch.randn(10, 16))
    trained = moe.tokens_per_expert.clone()
    pending = moe.pending_load.clone()
    assert trained.sum() == 20
    moe.eval()
    with torch.no_grad():
        moe(torch.randn(30, 16))
    assert torch.equal(moe.tokens_per_expert, trained) and torch.equal(moe.pending_load, pending)


def test_evaluation_every_step_leaves_the_logged_expert_load_alone(dataset: Path, tmp_path: Path):
    evaluated = tiny_pretrain(dataset, tmp_path / "eval", steps=4)
    evaluated.trainer.eval_every = 1
    plain = tiny_pretrain(dataset, tmp_path / "plain", steps=4)
    plain.trainer.eval_every = None
    pretrain(evaluated)
    pretrain(plain)
    with_eval = [r for r in metrics(tmp_path / "eval") if "loss" in r]
    without = [r for r in metrics(tmp_path / "plain") if "loss" in r]
    assert [r["step"] for r in with_eval] == [2, 4] and any(k.startswith("moe/layer") for k in with_eval[0])
    assert with_eval == without  # the expert shares included, though validation ran between the steps
    assert sum("val/loss" in r for r in metrics(tmp_path / "eval")) == 4


def test_kill_after_an_evaluation_and_resume_logs_the_uninterrupted_records(dataset: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    """Steps 2 and 4 log, evaluate and checkpoint; killed after step 3, the run resumes from step 2, whose
    evaluation the uninterrupted run's step-4 expert load must not have counted either."""
    def cfg(run_dir: Path):
        c = tiny_pretrain(dataset, run_dir, steps=6, checkpoint_interval=2)
        c.trainer.eval_every = 2
        return c

    pretrain(cfg(tmp_path / "whole"))
    run_killed_after(cfg(tmp_path / "killed"), 3, monkeypatch)
    assert list_checkpoints(tmp_path / "killed" / "checkpoints")[0].step == 2
    pretrain(cfg(tmp_path / "killed"))
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
    assert manifest_lines(tmp_path / "killed") == manifest_lines(tmp_path / "whole")
    assert summary(tmp_path / "killed") == summary(tmp_path / "whole")


def test_kill_before_the_first_checkpoint_and_restart_logs_step_zero_once(dataset: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    def cfg(run_dir: Path):
        return tiny_pretrain(dataset, run_dir, steps=4, checkpoint_interval=4)

    pretrain(cfg(tmp_path / "whole"))
    run_killed_after(cfg(tmp_path / "killed"), 2, monkeypatch)
    assert list_checkpoints(tmp_path / "killed" / "checkpoints") == []
    assert [r["step"] for r in metrics(tmp_path / "killed")] == [0, 2]  # what the kill left behind
    pretrain(cfg(tmp_path / "killed"))
    whole = metrics(tmp_path / "whole")
    assert [r["step"] for r in whole] == [0, 2, 4] and "val/unigram_loss" in whole[0]
    assert metrics(tmp_path / "killed") == whole
    assert manifest_lines(tmp_path / "killed") == manifest_lines(tmp_path / "whole")
    assert summary(tmp_path / "killed") == summary(tmp_path / "whole")


def test_resume_after_the_final_checkpoint_keeps_the_final_figures(dataset: Path, tmp_path: Path):
    """Killed once the last checkpoint is written but before summary.json: the restart resumes at
    max_steps, trains nothing, and must still report the last step's figures."""
    def cfg(run_dir: Path):
        return tiny_pretrain(dataset, run_dir, steps=4, checkpoint_interval=2)

    pretrain(cfg(tmp_path / "whole"))
    pretrain(cfg(tmp_path / "killed"))
    (tmp_path / "killed" / "summary.json").unlink()
    resumed = pretrain(cfg(tmp_path / "killed"))
    expected = summary(tmp_path / "whole")
    assert set(expected["final"]) >= {"loss", "aux_loss", "z_loss", "grad_norm"}
    assert resumed == expected and summary(tmp_path / "killed") == expected
    last_logged = read_jsonl(tmp_path / "whole" / "metrics.jsonl")[-1]
    assert all(last_logged[k] == v for k, v in expected["final"].items())
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
    assert manifest_lines(tmp_path / "killed") == manifest_lines(tmp_path / "whole")


def test_resume_between_log_steps_logs_the_uninterrupted_expert_load(dataset: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """Checkpoints every 3 steps, logs every 2: the step-3 checkpoint holds the expert counts of step 3,
    which the step-4 record shares with step 4's; resumed from it, that record must equal the uninterrupted
    one (it counted step 4 only when the counters were not checkpointed)."""
    def cfg(run_dir: Path):
        return tiny_pretrain(dataset, run_dir, steps=6, checkpoint_interval=3)

    pretrain(cfg(tmp_path / "whole"))
    run_killed_after(cfg(tmp_path / "killed"), 3, monkeypatch)
    assert list_checkpoints(tmp_path / "killed" / "checkpoints")[0].step == 3
    pretrain(cfg(tmp_path / "killed"))
    step4 = [r for r in metrics(tmp_path / "whole") if r["step"] == 4 and "loss" in r]
    assert step4 and any(k.startswith("moe/layer") for k in step4[0])
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
    assert manifest_lines(tmp_path / "killed") == manifest_lines(tmp_path / "whole")
    assert summary(tmp_path / "killed") == summary(tmp_path / "whole")


def run_sigkilled_at(cfg, point: str, tmp_path: Path) -> None:
    """Train `cfg` in a real process that SIGKILLs itself on reaching `point` ("<point>:<step>")."""
    path = tmp_path / f"{Path(cfg.run.dir).name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.run([sys.executable, "-m", "atom", "pretrain", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, KILL_AT: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(dataset: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    pretrain(killable(dataset, run_dir, async_save=False))
    return run_dir


def killable(dataset: Path, run_dir: Path, async_save: bool):
    """8 steps, checkpoints at 3, 6 and 8, logs every 2 steps, evaluates at 6."""
    cfg = tiny_pretrain(dataset, run_dir, steps=8, checkpoint_interval=3)
    cfg.checkpoint.async_save = async_save
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(("point", "async_save", "resumed_from"), [
    ("before_step:5", False, 3),
    ("save_started:6", False, 3),  # trainer_state.json and RNG written, no model yet
    ("save_unrenamed:6", False, 3),  # every file and COMPLETE.json written, not renamed
    ("write_in_flight:6", True, 3),  # the background write just started
    ("before_step:8", True, 3),  # step 6's write still pending while step 7 trained
    ("saved:8", False, 8),  # after the final checkpoint, before summary.json
], ids=["between-steps", "sync-save-started", "sync-save-unrenamed", "async-write", "async-pending", "after-final"])
def test_sigkill_anywhere_then_resume_writes_the_uninterrupted_records(
        dataset: Path, uninterrupted: Path, tmp_path: Path, point: str, async_save: bool, resumed_from: int):
    run_dir = tmp_path / "killed"
    cfg = killable(dataset, run_dir, async_save)
    run_sigkilled_at(cfg, point, tmp_path)
    assert not (run_dir / "summary.json").exists()
    assert list_checkpoints(run_dir / "checkpoints")[0].step == resumed_from
    partial = run_dir / "checkpoints" / "step_00000006.partial"  # the kill's leftover, where it hit a save
    assert partial.is_dir() == (point not in ("before_step:5", "saved:8"))
    if point.startswith("save_unrenamed"):  # complete in content, but never renamed: must not be loaded
        assert (partial / COMPLETE).is_file()
    pretrain(cfg)
    assert f"resumed from {run_dir / 'checkpoints'}/step_{resumed_from:08d}" in (
        run_dir / "logs" / "pretrain.log").read_text()
    assert metrics(run_dir) == metrics(uninterrupted)
    assert manifest_lines(run_dir) == manifest_lines(uninterrupted)
    assert summary(run_dir) == summary(uninterrupted)
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [8, 6]
    assert not list((run_dir / "checkpoints").glob("*.partial"))
