"""Mid-training from a pretrained checkpoint: longer context, anneal, evals before/after, souping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.config import ConfigError, RunConfig
from midtrain.config import MidtrainConfig, find_parent
from midtrain.evals import Generator
from midtrain.soup import SoupConfig, load_model_state
from midtrain.soup import run as soup
from midtrain.stage import run as midtrain
from pretrain.model.layers import RotaryEmbedding
from pretrain.stage import run as pretrain
from pretrain.train_manifest import read_train_manifest
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mid")
    data = build_token_dataset(root / "data")
    pretrain(tiny_pretrain(data, root / "pretrain", steps=8))
    return data, root / "pretrain"


def mid_config(data: Path, parent: Path, run_dir: Path, seed: int = 0, **model) -> MidtrainConfig:
    return MidtrainConfig.model_validate({
        "run": {"dir": str(run_dir), "seed": seed}, "parent": str(parent),
        "model": model or {"max_seq_len": 128, "rope": {"scaling": "yarn", "factor": 2.0,
                                                         "original_max_position": 64}},
        "data": {"path": str(data), "seq_len": 128, "global_batch": 2, "document_masking": True,
                 "val_sequences": 1},  # fewer tokens than the parent held out: the parent's set must carry over
        "optimizer": {"lr": 3e-3}, "trainer": {"max_steps": 6, "micro_batch": 1},
        "checkpoint": {"interval": 3}, "metrics": {"log_every": 1, "console": False},
        "evals": {"reasoning_problems": 3, "max_new_tokens": 8, "passkey_trials": 2}})


def test_midtrain_extends_context_anneals_and_evaluates(parent, tmp_path: Path, monkeypatch):
    data, pre = parent
    seen = []  # what each greedy decoding of the evals ran with (a spy: the real decoding runs)
    greedy = Generator.greedy

    def spy(gen: Generator, prompt_ids: list[int], max_new_tokens: int) -> str:
        yarn = RotaryEmbedding(gen.model.cfg.dim_per_head, gen.model.cfg.rope, 128)
        seen.append({"max_len": gen.max_len, "prompt": len(prompt_ids), "cfg": gen.model.cfg,
                     "passkey": "pass key" in gen.tok.decode(prompt_ids),
                     "yarn_tables": torch.equal(gen.model.rope.cos[:128], yarn.cos)})
        return greedy(gen, prompt_ids, max_new_tokens)

    monkeypatch.setattr(Generator, "greedy", spy)
    summary = midtrain(mid_config(data, pre, tmp_path / "mid"))
    assert summary["steps"] == 6
    evals = json.loads((tmp_path / "mid" / "evals.json").read_text())
    assert summary["evals"] == evals
    for when in ("before", "after"):
        assert set(evals[when]["passkey"]) == {"64", "128"}
        assert all(v in (0.0, 0.5, 1.0) for v in evals[when]["passkey"].values())  # hits of 2 trials
        reasoning = evals[when]["reasoning"]
        assert reasoning["problems"] == 3
        assert reasoning["accuracy"] in (0, 1 / 3, 2 / 3, 1) and reasoning["malformed"] in (0, 1 / 3, 2 / 3, 1)
        assert reasoning["accuracy"] + reasoning["malformed"] <= 1
        val = evals[when]["val_loss"]
        assert evals[when]["perplexity"] == pytest.approx({k.replace("val/loss", "ppl"): math.exp(v)
                                                           for k, v in val.items()})
        assert evals[when]["perplexity"]["ppl"] > 1
    # Both evals decoded with the extended model: 128-token context, YaRN tables; passkey prompts of both
    # lengths (2 trials each, 64 then 128) and 3 problems, before and after.
    assert len(seen) == 2 * (2 * 2 + 3) and [s["passkey"] for s in seen] == ([False] * 3 + [True] * 4) * 2
    assert all(s["max_len"] == 128 and s["cfg"].max_seq_len == 128 and s["cfg"].rope.scaling == "yarn"
               and s["yarn_tables"] for s in seen)
    prompts = [s["prompt"] for s in seen if s["passkey"]]
    assert prompts[2:4] == prompts[6:8] == [120, 120]  # 128 tokens less the 8 to answer
    plain = RotaryEmbedding(seen[0]["cfg"].dim_per_head, find_parent(pre).model.rope, 128)
    assert not torch.equal(plain.cos, RotaryEmbedding(plain.head_dim, seen[0]["cfg"].rope, 128).cos)
    assert evals["after"]["val_loss"]["val/loss"] < evals["before"]["val_loss"]["val/loss"]
    records = [json.loads(x) for x in (tmp_path / "mid" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[0] == pytest.approx(3e-3 * 5 / 6) and lrs[-1] == pytest.approx(0.0)  # linear to zero, no warmup
    lineage = json.loads((tmp_path / "mid" / "midtrain.json").read_text())
    assert lineage["parent"]["step"] == 8 and len(lineage["parent"]["content_sha256"]) == 64
    resumed = find_parent(tmp_path / "mid")
    assert resumed.model.max_seq_len == 128 and resumed.model.rope.scaling == "yarn"
    # The parent's validation documents stay out of mid-training (same data: every one of them occurs).
    parent_header, _ = read_train_manifest(pre / "train_tokens.jsonl")
    child_header, _ = read_train_manifest(tmp_path / "mid" / "train_tokens.jsonl")
    parent_keys = set(parent_header["stream"]["held_out_keys"])
    assert parent_keys and parent_keys <= set(child_header["stream"]["held_out_keys"])


def test_midtrain_starts_from_the_parent_weights(parent, tmp_path: Path):
    data, pre = parent
    cfg = mid_config(data, pre, tmp_path / "mid0")
    cfg.optimizer.lr = 1e-12  # (almost) no update: the result must be the parent's weights
    cfg.trainer.max_steps = 1
    midtrain(cfg)
    a, b = load_model_state(find_parent(pre)), load_model_state(find_parent(tmp_path / "mid0"))
    assert all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)


def test_bad_parents_and_model_changes_are_refused(parent, tmp_path: Path):
    data, pre = parent
    with pytest.raises(ConfigError, match=r"model.d_model: 64 differs from the parent checkpoint's 32"):
        midtrain(mid_config(data, pre, tmp_path / "x", d_model=64))
    with pytest.raises(ConfigError, match=r"max_seq_len=512 exceeds what rope.scaling=yarn supports"):
        midtrain(mid_config(data, pre, tmp_path / "y", max_seq_len=512,
                            rope={"scaling": "yarn", "factor": 2.0, "original_max_position": 64}))
    with pytest.raises(ConfigError, match="neither a run directory"):
        midtrain(mid_config(data, tmp_path, tmp_path / "z"))
    assert not any((tmp_path / n).exists() for n in "xyz")


def test_soup_is_the_elementwise_mean_and_trains_on(parent, tmp_path: Path):
    data, pre = parent
    cfg_a = mid_config(data, pre, tmp_path / "a", seed=1, max_seq_len=64)
    cfg_b = mid_config(data, pre, tmp_path / "b", seed=2, max_seq_len=64)
    for cfg in (cfg_a, cfg_b):
        cfg.data.seq_len = 64
        cfg.evals.reasoning_problems = 0
        cfg.evals.passkey_trials = 0
        midtrain(cfg)
    path = soup(SoupConfig(run=RunConfig(dir=str(tmp_path / "soup")), inputs=[str(tmp_path / "a"),
                                                                                str(tmp_path / "b")]))
    a, b = load_model_state(find_parent(tmp_path / "a")), load_model_state(find_parent(tmp_path / "b"))
    souped = load_model_state(find_parent(path))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(souped[k], (a[k] + b[k]) / 2) for k in a)
    manifest = json.loads((tmp_path / "soup" / "soup.json").read_text())
    assert [i["step"] for i in manifest["inputs"]] == [6, 6] and manifest["weights"] == [0.5, 0.5]
    cont = mid_config(data, tmp_path / "soup", tmp_path / "after-soup", max_seq_len=64)
    cont.data.seq_len = 64
    cont.trainer.max_steps = 2
    cont.evals.passkey_trials = 0
    assert midtrain(cont)["evals"]["before"]["perplexity"]["ppl"] > 1
