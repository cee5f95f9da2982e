"""A corpus with a planted GSM8K test question and a planted MMLU test item: curated without
decontamination, trained and released, the release's contamination report finds both (document, source,
license, steps) and the release's own record of the check (release.json, the card) counts them; curated with
it (the default), both are removed at curation and the report is clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from atom.cli import main
from core.config import RunConfig, load_config
from data_pipeline.curate import CurateConfig
from data_pipeline.curate.pipeline import run as curate
from data_pipeline.tokenizer.train import TokenizerConfig
from data_pipeline.tokenizer.train import run as train_tokenizer
from data_pipeline.tokens.tokenize import TokenizeConfig
from data_pipeline.tokens.tokenize import run as tokenize
from pretrain.stage import run as pretrain
from release.audit import audit_release
from release.build import build_release, write_sums
from release.card import render_card
from release.contamination import contamination, steps_reading
from release.manifest import read_release
from tests.data_pipeline.test_curate_decontam_benchmarks import STAGES_OFF, planted_corpus
from tests.pretrain.fixtures import tiny_pretrain

pytestmark = pytest.mark.slow
RELEASED = "2020-12-01"  # the corpus's date: after MMLU (2020-09), before GSM8K (2021-10)


def release_of(root: Path, decontaminate: bool) -> tuple[Path, Path, tuple]:
    corpus = root / "web.jsonl"
    planted = planted_corpus(corpus, pages=3)
    config = root / "curate.yaml"
    config.write_text(f"sources:\n  - {{name: web, kind: jsonl, path: {corpus}, license: CC-BY-4.0, "
                      f"released: '{RELEASED}'}}\n"
                      f"executor: {{tasks: 1, workers: 1}}\nstages:\n{STAGES_OFF}\n"
                      f"  decontamination: {{enabled: {str(decontaminate).lower()}}}\n"
                      f"run: {{dir: {root / 'curated'}}}\n")
    curate(load_config(CurateConfig, config))
    tok = train_tokenizer(TokenizerConfig(run=RunConfig(dir=str(root / "tokenizer")), input=str(root / "curated"),
                                          vocab_size=512))
    data = tokenize(TokenizeConfig(run=RunConfig(dir=str(root / "tokens")), input=str(root / "curated"),
                                   tokenizer=str(tok), shard_tokens=20_000))
    cfg = tiny_pretrain(data, root / "pretrain")
    n_tokens = json.loads((data / "manifest.json").read_text())["n_tokens"]
    epoch = -(-((n_tokens - 1) // cfg.data.seq_len) // cfg.data.global_batch)  # every window once
    cfg = tiny_pretrain(data, root / "pretrain", steps=epoch, checkpoint_interval=epoch)
    cfg.data.val_sequences = 0  # no held-out windows: the one epoch reads every document
    pretrain(cfg)
    return build_release(root / "pretrain", root / "release"), data, planted


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    return {flag: release_of(tmp_path_factory.mktemp(f"decontam_{flag}"), flag) for flag in (False, True)}


def test_contaminated_release_names_documents_sources_and_steps(trained, capsys):
    release, data, (gsm8k, mmlu) = trained[False]
    report = contamination(release, [str(data)])
    found = {(h.eval_set, h.instance): h for h in report.hits}
    assert set(found) == {("GSM8K", gsm8k.id), ("MMLU", mmlu.id)}
    for hit in found.values():
        assert hit.source == "web" and hit.license == "CC-BY-4.0" and hit.stage == 0 and hit.steps
    assert report.overlapping("GSM8K") == report.overlapping("MMLU") == 1
    assert report.overlapping("HellaSwag") == 0 and report.instances["GSM8K"] == 1319
    assert main(["audit", str(release), "--contamination", "GSM8K", "MMLU", "--data", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"HIT GSM8K instance {gsm8k.id}: document {found['GSM8K', gsm8k.id].document} (source web, " \
           f"license CC-BY-4.0), stage 0 steps " in out and out.rstrip().endswith("CONTAMINATED")


def test_decontaminated_release_is_clean(trained, capsys):
    release, data, _ = trained[True]
    report = json.loads((release.parent / "curated/reports/decontamination.json").read_text())
    assert sorted(report["by_eval_set"]) == ["GSM8K", "MMLU"]
    assert contamination(release, [str(data)]).hits == []
    assert main(["audit", str(release), "--contamination", "--data", str(data)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("CLEAN: no trained document shares an n-gram with these sets")


def test_release_records_the_check_and_the_audit_recomputes_it(trained, tmp_path):
    release, data, _ = trained[False]
    summary = read_release(release).contamination
    assert summary.newest_source == "web" and summary.sources["web"].released == RELEASED
    got = {name: (e.predates_data, e.overlapping, e.documents) for name, e in summary.eval_sets.items()}
    assert got["GSM8K"] == (False, 1, 1) and got["MMLU"] == (True, 1, 1) and got["HellaSwag"] == (True, 0, 0)
    card = (release / "README.md").read_text()
    assert f"The newest source of the training data is `web` version `unknown`, published {RELEASED}" in card
    assert "| GSM8K | 2021-10 | no | 1,319 | 1 | 1 |" in card and "| MMLU | 2020-09 | yes | 14,042 | 1 | 1 |" in card
    assert audit_release(release, data=[str(data)], load_weights=False).ok
    clean = read_release(trained[True][0]).contamination
    assert sum(e.overlapping for e in clean.eval_sets.values()) == 0
    assert "No trained document shares an n-gram" in (trained[True][0] / "README.md").read_text()

    def tampered(edit) -> Path:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(release, copy)
        meta = json.loads((copy / "release.json").read_text())
        edit(meta["contamination"])
        (copy / "release.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (copy / "README.md").write_text(render_card(read_release(copy)))
        write_sums(copy)
        return copy

    def failures(path: Path, data_dirs: list[str]) -> list[str]:
        report = audit_release(path, data=data_dirs, load_weights=False)
        return [c.check for c in report.checks if not c.ok]

    hidden = tampered(lambda c: c["eval_sets"]["GSM8K"].update(overlapping=0, documents=0))
    assert failures(hidden, [str(data)]) == ["contamination"]
    redated = tampered(lambda c: c["eval_sets"]["MMLU"].update(predates_data=False))
    assert failures(redated, []) == ["contamination.eval_sets publication dates"]


def test_missing_data_and_unknown_sets_are_named(trained, tmp_path, capsys):
    release, data, _ = trained[False]
    assert main(["audit", str(release), "--contamination"]) == 2
    assert "stage 0 (pretrain) trained on data whose manifest has sha256" in capsys.readouterr().err
    assert main(["audit", str(release), "--contamination", "GSM9K", "--data", str(data)]) == 2
    assert "unknown eval set(s) GSM9K; available: ARC-Easy" in capsys.readouterr().err
    (release / "lineage/00-pretrain/train_tokens.jsonl").rename(tmp_path / "moved")
    try:
        assert main(["audit", str(release), "--contamination", "--data", str(data)]) == 2
        assert "train_tokens.jsonl: missing from the release" in capsys.readouterr().err
    finally:
        (tmp_path / "moved").rename(release / "lineage/00-pretrain/train_tokens.jsonl")


def test_steps_reading_a_document():
    windows = torch.tensor([[0, 5], [2, 9], [7, 1]]).numpy()  # 3 steps of 2 windows, seq_len 10
    assert steps_reading(25, 31, windows, [1, 2, 3], 10) == [2]  # window 2 reads tokens 20..30
    assert steps_reading(30, 31, windows, [1, 2, 3], 10) == [2]  # token 30 is window 2's last (its target)
    assert steps_reading(0, 100, windows, [1, 2, 3], 10) == [1, 2, 3]
    assert steps_reading(60, 70, windows, [1, 2, 3], 10) == [1]  # window 5 reads 50..60
    assert steps_reading(61, 70, windows, [1, 2, 3], 10) == []
