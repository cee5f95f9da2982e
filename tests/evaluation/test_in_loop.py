"""In-loop benchmark evals during training: logged as eval/<task>/<metric> at the configured steps, equal to
`atom eval` of the checkpoint of that step, and the same after a stop and resume."""

from __future__ import annotations

import json

import pytest
import torch

from atom.cli import main
from pretrain.config import DownstreamConfig
from pretrain.metrics import benchmark_series, read_jsonl
from pretrain.stage import run as pretrain
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain

TASKS = [{"name": "arc_easy:rc_0shot", "limit": 4}, {"name": "mmlu:mc_0shot", "limit": 3}]


def eval_records(run_dir) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = {k: v for k, v in record.items() if k.startswith("eval/")}
        if values:
            out.setdefault(record["step"], {}).update(values)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    return build_token_dataset(tmp_path_factory.mktemp("inloop") / "data", max_modules=20)


def config(data, run_dir, steps):
    cfg = tiny_pretrain(data, run_dir, steps=steps, checkpoint_interval=4)
    cfg.downstream = DownstreamConfig(tasks=TASKS, every=4, batch_size=4)
    return cfg


def test_in_loop_evals_are_logged_and_equal_atom_eval_of_the_checkpoint(data, tmp_path, capsys):
    pretrain(config(data, tmp_path / "run", 8))
    logged = eval_records(tmp_path / "run")
    assert sorted(logged) == [4, 8]
    assert set(logged[8]) == {"eval/arc_easy:rc_0shot/acc", "eval/arc_easy:rc_0shot/acc_norm",
                              "eval/mmlu:mc_0shot/acc", "eval/mmlu:mc_0shot/acc_norm"}
    series = benchmark_series(read_jsonl(tmp_path / "run/metrics.jsonl"))  # what metrics.png plots
    assert sorted(series) == ["arc_easy:rc_0shot acc_norm", "mmlu:mc_0shot acc"]
    assert [step for step, _ in series["mmlu:mc_0shot acc"]] == [4, 8]
    eval_cfg = tmp_path / "eval.yaml"
    eval_cfg.write_text(json.dumps({"run": {"dir": str(tmp_path / "eval")}, "tasks": TASKS, "batch_size": 4}))
    assert main(["eval", str(tmp_path / "run"), str(eval_cfg), "--set", "step=4"]) == 0
    results = json.loads((tmp_path / "eval/results.json").read_text())["tasks"]
    assert {f"eval/{t}/{m}": v for t, r in results.items() for m, v in r["metrics"].items()} == logged[4]


def test_in_loop_evals_after_a_resume_equal_an_uninterrupted_run(data, tmp_path):
    pretrain(config(data, tmp_path / "whole", 8))
    pretrain(config(data, tmp_path / "split", 4))  # stops at its final checkpoint (step 4) ...
    pretrain(config(data, tmp_path / "split", 8))  # ... and is continued to step 8 from it
    assert sorted(eval_records(tmp_path / "whole")) == [4, 8]
    assert eval_records(tmp_path / "split") == eval_records(tmp_path / "whole")


def test_release_card_shows_the_last_in_loop_scores_beside_chance_and_the_audit_recomputes_them(data, tmp_path):
    from release.audit import audit_release
    from release.build import build_release, write_sums
    from release.card import render_card
    from release.manifest import read_release

    pretrain(config(data, tmp_path / "run", 8))
    release = build_release(tmp_path / "run", tmp_path / "release", check_contamination=False)
    scores = read_release(release).stages[0].benchmarks
    logged = eval_records(tmp_path / "run")[8]
    assert scores.step == 8 and [t.task for t in scores.tasks] == [t["name"] for t in TASKS]
    arc, mmlu = scores.tasks
    assert (arc.eval_set, arc.instances, arc.primary_metric, arc.chance) == ("ARC-Easy", 4, "acc_norm", 0.25)
    assert (mmlu.eval_set, mmlu.instances, mmlu.primary_metric, mmlu.chance) == ("MMLU", 3, "acc", 0.25)
    assert {f"eval/{t.task}/{m}": v for t in scores.tasks for m, v in t.metrics.items()} == logged
    card = (release / "README.md").read_text()
    assert "Stage 0 (pretrain), benchmarks in-loop at step 8" in card
    assert f"| arc_easy:rc_0shot | ARC-Easy | 4 | acc_norm | {logged['eval/arc_easy:rc_0shot/acc_norm']:.4g} " \
           "| 0.25 |" in card
    assert audit_release(release, load_weights=False).ok

    meta = json.loads((release / "release.json").read_text())
    meta["stages"][0]["benchmarks"]["tasks"][0]["metrics"]["acc_norm"] = 1.0
    (release / "release.json").write_text(json.dumps(meta, sort_keys=True))
    (release / "README.md").write_text(render_card(read_release(release)))
    write_sums(release)
    report = audit_release(release, load_weights=False)
    assert [c.check for c in report.checks if not c.ok] == ["stages[0].benchmarks"]
    # a release made before in-loop benchmarks existed states none: it still passes
    del meta["stages"][0]["benchmarks"]
    (release / "release.json").write_text(json.dumps(meta, sort_keys=True))
    (release / "README.md").write_text(render_card(read_release(release)))
    write_sums(release)
    assert audit_release(release, load_weights=False).ok
