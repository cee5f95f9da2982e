"""`atom eval` on a real (tiny) release and on the run it came from, checked against lm-evaluation-harness."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atom.cli import main
from release.build import build_release
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain

REPO = Path(__file__).resolve().parents[2]
TASKS = """
tasks:
  - {name: "arc_easy:rc_0shot", limit: 12}
  - {name: "arc_easy:mc_5shot", limit: 6}
  - {name: "hellaswag:rc_0shot", limit: 6}
  - {name: "mmlu:rc_0shot", limit: 6}
  - {name: "winogrande:rc_0shot", limit: 4}
  - {name: "gsm8k:cot_8shot", limit: 2, max_new_tokens: 6}
  - {name: "minerva_math_500:0shot", limit: 1, max_new_tokens: 6}
batch_size: 5
"""


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    from pretrain.stage import run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    data = build_token_dataset(root / "data", max_modules=20)
    run(tiny_pretrain(data, root / "pretrain", steps=8))
    release = build_release(root / "pretrain", root / "release")
    config = root / "eval.yaml"
    config.write_text(f"run: {{dir: {root / 'eval'}}}\n" + TASKS)
    return {"root": root, "run": root / "pretrain", "release": release, "config": config}


def atom_eval(target: Path, config: Path, run_dir: Path, capsys) -> tuple[dict, str]:
    assert main(["eval", str(target), str(config), "--set", f"run.dir={run_dir}"]) == 0
    return json.loads((run_dir / "results.json").read_text()), capsys.readouterr().out


def test_results_table_items_and_determinism(released, tmp_path, capsys):
    results, out = atom_eval(released["release"], released["config"], tmp_path / "a", capsys)
    tasks = results["tasks"]
    assert sorted(tasks) == sorted(["arc_easy:rc_0shot", "arc_easy:mc_5shot", "hellaswag:rc_0shot", "mmlu:rc_0shot",
                           "winogrande:rc_0shot", "gsm8k:cot_8shot", "minerva_math_500:0shot"])
    assert tasks["arc_easy:rc_0shot"]["instances"] == 12 and tasks["arc_easy:rc_0shot"]["primary_metric"] == "acc_norm"
    assert tasks["arc_easy:mc_5shot"]["primary_metric"] == "acc" and tasks["winogrande:rc_0shot"]["chance"] == 0.5
    assert tasks["gsm8k:cot_8shot"]["chance"] == 0 and tasks["gsm8k:cot_8shot"]["primary_metric"] == "exact_match"
    gsm8k = {"license": "MIT", "published": "2021-10",
             "origin": "https://github.com/openai/grade-school-math (Cobbe et al. 2021)"}
    assert results["eval_sets"]["GSM8K"] == gsm8k
    assert results["target"] == {"kind": "release", "name": "pretrain", "step": 8}  # the run it released
    items = [json.loads(line) for line in (tmp_path / "a/items/arc_easy_rc_0shot.jsonl").read_text().splitlines()]
    assert len(items) == 12 and all(len(i["loglikelihoods"]) == 4 and i["gold"] in range(4) for i in items)
    acc = sum(i["predicted"] == i["gold"] for i in items) / 12
    assert tasks["arc_easy:rc_0shot"]["metrics"]["acc"] == acc
    gens = [json.loads(line) for line in (tmp_path / "a/items/gsm8k_cot_8shot.jsonl").read_text().splitlines()]
    assert [g["reference"] for g in gens] == ["18", "3"] and all(isinstance(g["generation"], str) for g in gens)
    row = next(line for line in out.splitlines() if line.strip().startswith("arc_easy:rc_0shot"))
    assert row.split()[1:] == ["ARC-Easy", "12", "acc_norm", f"{tasks['arc_easy:rc_0shot']['score']:.3f}",
                               f"{tasks['arc_easy:rc_0shot']['chance']:.3f}"]
    atom_eval(released["release"], released["config"], tmp_path / "b", capsys)
    for name in ("results.json", "items/arc_easy_mc_5shot.jsonl", "items/gsm8k_cot_8shot.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_run_scores_as_its_release(released, tmp_path, capsys):
    """The run directory's newest checkpoint is the release's weights: every log-likelihood is the same."""
    from_release, _ = atom_eval(released["release"], released["config"], tmp_path / "rel", capsys)
    from_run, _ = atom_eval(released["run"], released["config"], tmp_path / "run", capsys)
    assert from_run["target"] == {"kind": "pretrain", "name": "pretrain", "step": 8}
    assert from_run["tasks"] == from_release["tasks"]
    for name in ("arc_easy_rc_0shot", "mmlu_rc_0shot", "gsm8k_cot_8shot"):
        assert (tmp_path / f"rel/items/{name}.jsonl").read_text() == (tmp_path / f"run/items/{name}.jsonl").read_text()


def test_lm_eval_harness_agrees(released, tmp_path, capsys):
    """lm-eval's `hf` backend (transformers' model, its own request building and metrics) on the command
    `atom eval` prints, over the same instances: per-choice log-likelihoods within 1e-4 + 1e-6 * |ll|
    (float32 sums over up to 64 tokens in two implementations whose logits agree to ~2e-6) and the same
    acc and acc_norm on every item. 5-shot MC prompts are longer than the model's 64 positions: both
    truncate them on the left."""
    _, out = atom_eval(released["release"], released["config"], tmp_path / "a", capsys)
    command = next(line for line in out.splitlines() if "check with lm-eval:" in line).split(": ", 1)[1]
    argv = shlex.split(command)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", *argv[1:]], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = argv[argv.index("--tasks") + 1].split(",")
    assert tasks == ["atom_arc_easy_rc_0shot", "atom_arc_easy_mc_5shot", "atom_hellaswag_rc_0shot",
                     "atom_mmlu_rc_0shot"]  # winogrande (per-choice contexts) has no plain lm-eval form
    for task in tasks:
        (samples,) = (tmp_path / "a/lm_eval_out").rglob(f"samples_{task}_*.jsonl")
        theirs = {d["doc_id"]: d for d in map(json.loads, samples.read_text().splitlines())}
        ours = [json.loads(line) for line in (tmp_path / f"a/items/{task[5:]}.jsonl").read_text().splitlines()]
        assert len(theirs) == len(ours)
        for k, item in enumerate(ours):
            lls = [float(r[0][0]) for r in theirs[k]["resps"]]
            assert item["loglikelihoods"] == pytest.approx(lls, abs=1e-4, rel=1e-6), (task, k)
            assert (item["predicted"] == item["gold"]) == bool(theirs[k]["acc"]), (task, k)
            assert (item["predicted_norm"] == item["gold"]) == bool(theirs[k]["acc_norm"]), (task, k)


def test_bad_targets_and_dry_run(released, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere"), str(released["config"])]) == 2
    assert "target: not a directory" in capsys.readouterr().err
    assert main(["eval", str(released["release"]), str(released["config"]), "--set",
                 "tasks=[{name: 'arc_easy:rc_0shott'}]"]) == 2
    assert "unknown eval task 'arc_easy:rc_0shott'; available: " in capsys.readouterr().err
    assert main(["eval", str(released["release"]), str(released["config"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"target: {released['release']}" in out and "score arc_easy:rc_0shot (first 12)" in out
