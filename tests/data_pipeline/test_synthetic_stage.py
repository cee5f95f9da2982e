"""`atom synth`: the curated contract, determinism, the real tokenize stage on its output, accounting."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from atom.cli import main
from core.config import ConfigError, RunConfig, load_config
from core.manifest import recorded_config_sha256
from data_pipeline.audit import audit_data
from data_pipeline.synthetic import stage as synth
from data_pipeline.synthetic.problems import generate_problems
from data_pipeline.synthetic.stage import SynthConfig
from data_pipeline.tokens.curated import COLUMNS, open_curated
from evaluation.verify import CORRECT, verify
from tests.data_pipeline.synthetic_fixtures import ScriptedBackend, tiny_model
from tests.data_pipeline.tokens_fixtures import hashes, tokenize_config

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "configs" / "data" / "synth_reasoning.yaml"
REJECTION = REPO / "configs" / "data" / "synth_rejection.yaml"


def template_config(run_dir: Path, count: int = 300, seed: int = 0, **kw) -> SynthConfig:
    return SynthConfig(run=RunConfig(dir=str(run_dir), seed=seed), problems={"count": count}, **kw)


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    return synth.run(template_config(tmp_path_factory.mktemp("synth") / "run"))


def test_output_is_a_curated_run(template_run):
    curated = open_curated(template_run)  # the tokenizer stage's own contract check
    table = pq.read_table(template_run / "curated" / "part-00000.parquet")
    assert tuple(table.column_names) == COLUMNS
    rows = table.to_pylist()
    assert curated.n_docs == len(rows) and curated.sources == {"synthetic-math": len(rows)}
    for row in rows:
        assert row["id"] == "synth/" + hashlib.sha256(row["text"].encode()).hexdigest()[:32]
        assert row["license"] == "Apache-2.0" and row["language"] == "en"
        template = row["url"].removeprefix("synthetic://atom/")
        assert row["source_version"] == f"{template.split('/')[0]}@1"
        assert row["text"].startswith("<|im_start|>user\n") and row["text"].endswith("<|im_end|>\n")
        assistant = row["text"].split("<|im_start|>assistant\n", 1)[1]
        assert assistant.startswith("<think>\n") and "</think>\nAnswer: " in assistant


def test_manifest_and_records(template_run):
    manifest = json.loads((template_run / "manifest.json").read_text())
    assert manifest["schema"] == "atom.curation/1"
    assert manifest["config_sha256"] == recorded_config_sha256(template_config(Path("elsewhere")))
    names = [s["name"] for s in manifest["stages"]]
    assert names == ["generate", "verify", "dedup"]
    for prev, s in zip(manifest["stages"], manifest["stages"][1:], strict=False):
        assert prev["documents_kept"] == s["documents_in"]
    for s in manifest["stages"]:
        assert s["documents_in"] == s["documents_kept"] + sum(s["dropped"].values())
        assert {"bytes_in", "bytes_out"} <= s.keys()
    dedup = manifest["stages"][-1]
    assert manifest["quarantine"] == {"malformed_output": 0}
    assert sum(o["documents"] for o in manifest["outputs"]) == dedup["documents_kept"]

    records = pq.read_table(template_run / "synthetic_records.parquet").to_pylist()
    assert len(records) == 300 and manifest["records"]["rows"] == 300
    kept = [r for r in records if r["kept"]]
    assert len(kept) == dedup["documents_kept"]
    assert sum(r["drop_reason"] == "duplicate" for r in records) == dedup["dropped"].get("duplicate", 0)
    ids = set(pq.read_table(template_run / "curated").column("id").to_pylist())
    assert {r["doc_id"] for r in kept} == ids
    for r in records:
        assert r["generator"] and r["generator_version"] == 1 and r["template"].startswith(r["generator"] + "/")
        assert r["backend_kind"] == "template" and r["sampling"] == "{}"
        assert r["status"] == CORRECT and r["accepted"] and r["difficulty"] in (1, 2, 3)
    # the recorded seed regenerates the problem
    from data_pipeline.synthetic.problems import make_problem
    r = records[7]
    assert make_problem(r["generator"], r["difficulty"], r["seed"]).trace() == r["response"]


def test_same_seed_same_bytes(tmp_path):
    a = synth.run(template_config(tmp_path / "a", count=200, seed=4))
    b = synth.run(template_config(tmp_path / "b", count=200, seed=4))
    assert hashes(a) == hashes(b)  # curated shards, records table and manifest, byte for byte
    synth.run(template_config(tmp_path / "a", count=200, seed=4))  # re-run in place
    assert hashes(a) == hashes(b)
    c = synth.run(template_config(tmp_path / "c", count=200, seed=5))
    assert hashes(c)["curated/part-00000.parquet"] != hashes(a)["curated/part-00000.parquet"]


def test_shards_split_by_docs_per_shard(tmp_path):
    run = synth.run(template_config(tmp_path / "r", count=120, docs_per_shard=50))
    manifest = json.loads((run / "manifest.json").read_text())
    assert [o["path"] for o in manifest["outputs"]] == [f"curated/part-{i:05d}.parquet" for i in range(3)]
    assert open_curated(run).n_docs == sum(o["documents"] for o in manifest["outputs"])


def test_tokenize_stage_reads_synthetic_output(template_run, tmp_path_factory, tmp_path):
    from data_pipeline.tokens.tokenize import run as tokenize

    _, tokenizer, _ = tiny_model(tmp_path_factory)
    dataset = tokenize(tokenize_config(tmp_path / "tokens", template_run, tokenizer,
                                       allow_licenses=["Apache-2.0"]))
    manifest = json.loads((dataset / "manifest.json").read_text())
    n_docs = open_curated(template_run).n_docs
    assert manifest["n_docs"] == n_docs
    assert manifest["sources"]["synthetic-math"]["docs"] == n_docs
    assert manifest["curation"]["schema"] == "atom.curation/1"
    assert [s["name"] for s in manifest["curation"]["stages"]] == ["generate", "verify", "dedup"]


def test_quickstart_config_runs_in_seconds(tmp_path, capsys):
    start = time.monotonic()
    assert main(["synth", str(QUICK), "--set", f"run.dir={tmp_path / 'q'}"]) == 0
    assert time.monotonic() - start < 30
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["stages"][0]["documents_in"] == 2000
    assert manifest["stages"][-1]["documents_kept"] > 1500
    assert main(["synth", str(REJECTION), "--dry-run"]) == 0
    assert "endpoint http://127.0.0.1:8000/v1" in capsys.readouterr().out


def test_unknown_generator_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"problems.generators.*unknown generator\(s\) 'calculus'.*known: arithmetic"):
        load_config(SynthConfig, QUICK, ["problems.generators=[arithmetic, calculus]"])
    assert main(["synth", str(QUICK), "--set", "problems.generators=[calculus]",
                 "--set", f"run.dir={tmp_path / 'x'}"]) == 2
    assert "calculus" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("override, message", [
    (["backend.kind=endpoint"], "needs backend.base_url and backend.model"),
    (["backend.kind=local"], "needs backend.model_dir"),
    (["rephrase.input=somewhere"], "rephrase needs a model"),
    (["problems.difficulties=[1, 4]"], "difficulties"),
    (["problems=null"], "nothing to generate"),
])
def test_bad_configs(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SynthConfig, QUICK, override)


def test_rejection_sampling_accounting(tmp_path, monkeypatch):
    """Per problem: 4 attempts scripted wrong / malformed / correct / correct (every 3rd problem: no text)."""
    config = SynthConfig(run=RunConfig(dir=str(tmp_path / "rs"), seed=2), problems={"count": 30},
                         backend={"kind": "endpoint", "base_url": "http://unused.invalid/v1", "model": "m"},
                         rejection={"samples_per_problem": 4, "keep_per_problem": 1})
    problems = generate_problems(30, 2, config.problems.generators, config.problems.difficulties)
    backend = ScriptedBackend(problems, ["wrong", "malformed", "correct", "correct"])
    monkeypatch.setattr(synth, "build_backend", lambda *a, **k: backend)
    run = synth.run(config)

    records = pq.read_table(run / "synthetic_records.parquet").to_pylist()
    assert backend.requests == len(records) == 120
    per_problem: dict[tuple, list] = {}
    for r in records:
        per_problem.setdefault((r["template"], r["seed"]), []).append(r)
    assert len(per_problem) == 30
    for attempts in per_problem.values():
        accepted = sum(r["accepted"] for r in attempts)
        rejected = sum(not r["accepted"] for r in attempts)
        assert accepted + rejected == len(attempts) == 4
        assert accepted == 2 and [r["attempt"] for r in attempts] == [0, 1, 2, 3]
        assert [r["status"] for r in attempts] == ["wrong", "malformed", "correct", "correct"]
        assert [r["drop_reason"] for r in attempts][:2] == ["wrong_answer", "malformed_output"]
        assert attempts[3]["drop_reason"] == "extra_for_problem" and not attempts[3]["kept"]
        assert len({r["sample_seed"] for r in attempts}) == 4
        for r in attempts:
            assert r["backend_kind"] == "scripted" and r["backend_model"] == "scripted-test-model"
            assert json.loads(r["sampling"]) == {"max_new_tokens": 512, "temperature": 0.7, "top_p": 0.95}

    manifest = json.loads((run / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["sample"]["documents_in"] == 120 and stages["sample"]["dropped"] == {"malformed_output": 30}
    assert stages["verify"]["documents_in"] == 90 and stages["verify"]["dropped"] == {"wrong_answer": 30}
    assert stages["select"]["documents_in"] == 60 and stages["select"]["dropped"] == {"extra_for_problem": 30}
    assert stages["dedup"]["documents_in"] == 30
    assert manifest["records"]["by_kind"]["trace"] == {"attempted": 120, "accepted": 60, "rejected": 60,
                                                       "kept": stages["dedup"]["documents_kept"]}
    assert manifest["quarantine"] == {"malformed_output": 30}
    quarantined = (run / "quarantine" / "malformed.jsonl").read_text().splitlines()
    assert len(quarantined) == 30 and all(json.loads(line)["reason"] for line in quarantined)
    assert audit_data(run).ok, audit_data(run).render()  # every count above, recounted by `atom audit`
    # every kept document holds a trace the verifier accepts
    by_prompt = {p.prompt(): p for p in problems}
    for text in pq.read_table(run / "curated").column("text").to_pylist():
        prompt = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        answer = text.split("<|im_start|>assistant\n", 1)[1]
        p = by_prompt[prompt]
        assert verify(answer, p.answer, p.unit).status == CORRECT


def test_responses_without_text_are_quarantined(tmp_path, monkeypatch):
    config = SynthConfig(run=RunConfig(dir=str(tmp_path / "rs")), problems={"count": 10},
                         backend={"kind": "endpoint", "base_url": "http://unused.invalid/v1", "model": "m"},
                         rejection={"samples_per_problem": 2})
    problems = generate_problems(10, 0, config.problems.generators, config.problems.difficulties)
    monkeypatch.setattr(synth, "build_backend", lambda *a, **k: ScriptedBackend(problems, ["none", "correct"]))
    run = synth.run(config)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["quarantine"] == {"malformed_output": 10}
    records = pq.read_table(run / "synthetic_records.parquet").to_pylist()
    empty = [r for r in records if r["response"] is None]
    assert len(empty) == 10 and all(r["status"] == "malformed" and r["reason"] == "no text in the response"
                                    for r in empty)
    assert open_curated(run).n_docs == 10


def _edit_manifest(run: Path, edit) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    edit(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("tamper, failing", [
    (lambda run: _edit_manifest(run, lambda m: m["records"]["by_kind"]["trace"].update(kept=1)), "records.by_kind"),
    (lambda run: _edit_manifest(run, lambda m: m["stages"][0].update(documents_kept=7)), "stages.generate"),
    (lambda run: _edit_manifest(run, lambda m: m["sources"]["synthetic-math"].update(bytes=1)), "sources"),
    (lambda run: _edit_manifest(run, lambda m: m["quarantine"].update(malformed_output=3)), "quarantine"),
    (lambda run: pq.write_table(pq.read_table(run / "curated" / "part-00000.parquet").slice(0, 1),
                                run / "curated" / "part-00000.parquet"), "sha256 and size"),
])
def test_audit_of_a_synth_run_recounts_it(template_run, tmp_path, capsys, tamper, failing):
    """`atom audit` passes an untouched synth run and fails each edited count or truncated shard, naming it."""
    assert main(["audit", str(template_run)]) == 0
    assert "synthetic run" in capsys.readouterr().out
    run = tmp_path / "copy"
    shutil.copytree(template_run, run)
    tamper(run)
    assert main(["audit", str(run)]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and failing in line for line in out.splitlines()), out
