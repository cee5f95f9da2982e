"""The training loop: determinism, bit-exact resume after a kill, fallback on a damaged checkpoint."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from core.config import ConfigError
from pretrain.checkpoint import KILL_AT, list_checkpoints
from pretrain.stage import run as pretrain
from pretrain.train_manifest import read_train_manifest
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("data"))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpt = list_checkpoints(run_dir / "checkpoints")[0]
    out = run_dir / "final.pt"
    dcp_to_torch_save(ckpt.path / "dcp", out)
    return torch.load(out, weights_only=False)["app"]["model"]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_runs_are_bit_identical_and_loss_falls(dataset: Path, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    measured = tiny_pretrain(dataset, a)
    measured.metrics.peak_flops_per_device = "measure"  # MFU against a matmul timed at start
    summary = pretrain(measured)
    pretrain(tiny_pretrain(dataset, b))
    assert losses(a) == losses(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert summary["steps"] == 12 and summary["tokens_seen"] == 12 * 4 * 32
    first, last = losses(a)[0], losses(a)[-1]
    assert last < first - 0.3, (first, last)
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/loss" in r]
    assert len(val) == 2 and any(k.startswith("val/loss/stdlib-") for k in val[0])
    unigram = records[0]["val/unigram_loss"]
    assert 3.0 < unigram < math.log(512)  # below uniform: the bar a trained model must clear
    assert (a / "metrics.png").stat().st_size > 0 and any((a / "tensorboard").iterdir())
    mfu = [r["mfu"] for r in records if "mfu" in r]
    assert mfu and all(0 < m < 1 for m in mfu)
    assert not any("mfu" in json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_kill_and_resume_equals_uninterrupted(dataset: Path, tmp_path: Path, async_save: bool):
    """Killed (a real SIGKILL, see pretrain.checkpoint.kill_point) before step 13. With async_save the killed
    run writes its checkpoints in the background and step 10's is still being written then, so the run resumes
    from step 5; the uninterrupted reference writes them synchronously."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    steps = 40
    pretrain(tiny_pretrain(dataset, whole, steps=steps, checkpoint_interval=5))
    cfg = tiny_pretrain(dataset, killed, steps=steps, checkpoint_interval=5)
    cfg.checkpoint.async_save = async_save
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    command = [sys.executable, "-m", "atom", "pretrain", str(cfg_path)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, KILL_AT: "before_step:13"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed / "summary.json").exists()
    assert list_checkpoints(killed / "checkpoints")[0].step == (5 if async_save else 10)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wa, wb = final_weights(whole), final_weights(killed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses(whole) == losses(killed)
    header, records = read_train_manifest(killed / "train_tokens.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert [r["batch"] for r in records] == list(range(steps))  # no batch consumed twice or skipped
    assert header["stream"]["tokenizer_sha256"]


def test_damaged_checkpoint_falls_back(dataset: Path, tmp_path: Path):
    run_dir = tmp_path / "r"
    pretrain(tiny_pretrain(dataset, run_dir, steps=8))
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    victim = next(newest.path.rglob("*.distcp"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    summary = pretrain(tiny_pretrain(dataset, run_dir, steps=10))  # more steps: an allowed change
    assert summary["steps"] == 10
    log = (run_dir / "logs" / "pretrain.log").read_text()
    assert "damaged" in log and "resumed from" in log and "step_00000004" in log.split("resumed from")[-1]


def test_activation_checkpointing_gives_the_same_losses(dataset: Path, tmp_path: Path):
    pretrain(tiny_pretrain(dataset, tmp_path / "plain", steps=4))
    pretrain(tiny_pretrain(dataset, tmp_path / "ac", steps=4, activation_checkpointing=True))
    assert losses(tmp_path / "plain") == losses(tmp_path / "ac")
    assert all(torch.equal(a, b) for a, b in zip(final_weights(tmp_path / "plain").values(),
                                                 final_weights(tmp_path / "ac").values(), strict=True))


def test_bad_input_is_refused_before_training(dataset: Path, tmp_path: Path):
    from core.config import ConfigError
    from pretrain.config import PretrainConfig

    cfg = tiny_pretrain(dataset, tmp_path / "tok", steps=2)
    cfg.data.tokenizer_sha256 = "0" * 64  # the model was meant for another tokenizer
    with pytest.raises(ConfigError, match="was tokenized with tokenizer"):
        pretrain(cfg)
    with pytest.raises(ValueError, match=r"data.seq_len=128 exceeds model.max_seq_len=64"):
        PretrainConfig.model_validate({**tiny_pretrain(dataset, tmp_path / "x").to_dict(),
                                       "data": {**cfg.data.to_dict(), "seq_len": 128}})
    run_dir = tmp_path / "shape"
    pretrain(tiny_pretrain(dataset, run_dir, steps=2))
    wider = tiny_pretrain(dataset, run_dir, steps=4)
    wider.model.d_model = 64  # resuming into a different model shape breaks resumption
    with pytest.raises(ConfigError, match="changed model.d_model"):
        pretrain(wider)
    with pytest.raises(ValueError, match="checkpoint.async_save works with parallel.backend none or fsdp2"):
        PretrainConfig.model_validate({**cfg.to_dict(), "checkpoint": {"async_save": True},
                                       "parallel": {"backend": "deepspeed"}})
    reordered = tiny_pretrain(dataset, run_dir, steps=4)
    reordered.run.seed = 4  # a different data order
    with pytest.raises(ConfigError, match="changed run.seed"):
        pretrain(reordered)


@pytest.mark.slow
def test_compiled_training_matches_eager(dataset: Path, tmp_path: Path):
    """trainer.compile (each block through torch.compile): same losses within float tolerance, and its
    checkpoints hold the same parameter names, so eager runs and exports read them."""
    pretrain(tiny_pretrain(dataset, tmp_path / "eager", steps=4))
    pretrain(tiny_pretrain(dataset, tmp_path / "compiled", steps=4, compile=True))
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 2
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(eager, compiled, strict=True)), (eager, compiled)
    we, wc = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert we.keys() == wc.keys()
    assert all(torch.allclose(we[k], wc[k], rtol=1e-3, atol=1e-5) for k in we)


@pytest.mark.parametrize("edit, named", [
    (lambda lines: [lines[0].replace('"atom.train_tokens/1"', '"atom.train_tokens/7"'), *lines[1:]],
     "line 1: schema 'atom.train_tokens/7' is not a version this atom reads"),
    (lambda lines: [lines[0].replace('"seq_len": ', '"seq_len": "'), *lines[1:]], "line 1: not valid JSON"),
    (lambda lines: [lines[0], lines[1].replace('"tokens": ', '"tokens": -'), *lines[2:]],
     "line 2 (atom.train_tokens/1 step record): tokens: input should be greater than or equal to 0"),
    (lambda lines: [lines[0].replace('"seed": ', '"seeds": '), *lines[1:]], "seeds: extra inputs are not permitted"),
])
def test_a_training_manifest_is_validated_on_read(tmp_path: Path, edit, named: str) -> None:
    """What the release builder, the audit and `init_from` read is refused, naming the line and the key or the
    schema version, when it is not the format this atom writes; the untouched file reads back as written."""
    from pretrain.train_manifest import TrainManifest, read_train_manifest

    class Loader:
        batches_per_epoch = 3

    path = tmp_path / "train_tokens.jsonl"
    stream = {"path": "data", "manifest_sha256": "0" * 64, "schema": "atom.tokens/1", "n_tokens": 100,
              "tokenizer_sha256": "1" * 64, "held_out": [2], "held_out_documents": [[64, 80]],
              "held_out_keys": ["00000000000000ff"]}
    manifest = TrainManifest(path)
    manifest.write_header(stream, tiny_pretrain(tmp_path / "data", tmp_path / "run"), Loader())
    manifest.record(1, 0, 128)
    header, records = read_train_manifest(path)
    assert header["stream"] == stream and records == [{"step": 1, "batch": 0, "tokens": 128}]
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(ConfigError, match=re.escape(named)):
        read_train_manifest(path)
