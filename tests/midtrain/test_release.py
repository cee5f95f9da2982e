"""`atom release` / `atom audit RELEASE`: a tiny pretraining run (and a second stage started from it) released,
loaded by transformers offline, rebuilt byte-identically, audited, and tampered with file by file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from atom.cli import main
from core.audit import AuditReport
from pretrain.train_manifest import read_train_manifest
from release.audit import audit_release
from release.build import SUMS, build_release, write_sums
from release.data import StreamDocuments
from release.lineage import lineage, parent_checkpoint, touched_documents, trained_windows
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12-step pretraining run, a 4-step mid-training run from its step-8 checkpoint (longer context, YaRN),
    and a release of the pretraining run."""
    from midtrain.config import MidtrainConfig
    from midtrain.stage import run as midtrain
    from pretrain.stage import run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("release")
    data = build_token_dataset(root / "data", max_modules=30)
    run(tiny_pretrain(data, root / "pretrain", steps=12))
    midtrain(MidtrainConfig.model_validate({
        "run": {"dir": str(root / "stage2"), "seed": 1}, "parent": str(root / "pretrain/checkpoints/step_00000008"),
        "model": {"max_seq_len": 128, "rope": {"scaling": "yarn", "factor": 2.0, "original_max_position": 64}},
        "data": {"path": str(data), "seq_len": 64, "global_batch": 2, "val_sequences": 2},
        "optimizer": {"lr": 3e-3}, "trainer": {"max_steps": 4, "micro_batch": 1},
        "checkpoint": {"interval": 2}, "metrics": {"log_every": 1, "console": False},
        "evals": {"reasoning_problems": 1, "max_new_tokens": 2, "passkey_trials": 1}}))
    (root / "pretrain" / "evals.json").write_text(json.dumps({"humaneval": {"pass@1": 0.0}}))
    release = build_release(root / "pretrain", root / "release")
    return {"root": root, "data": data, "run": root / "pretrain", "stage2": root / "stage2", "release": release}


def failures(report: AuditReport) -> list[str]:
    return [f"{c.file}: {c.check}" for c in report.failures]


def tampered(trained: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(trained["release"], out)
    return out


def test_release_layout_and_card(trained: dict[str, Path]) -> None:
    rel = trained["release"]
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "README.md", "metrics.png", "release.json", SUMS,
                 "lineage/00-pretrain/config.yaml", "lineage/00-pretrain/train_tokens.jsonl",
                 "lineage/00-pretrain/checkpoints.json", "lineage/00-pretrain/data/manifest.json",
                 "lineage/00-pretrain/data/provenance.parquet", "lineage/00-pretrain/evals.json"):
        assert (rel / name).is_file(), name
    release = json.loads((rel / "release.json").read_text())
    stage = release["stages"][0]
    assert (stage["step"], stage["tokens"], stage["global_batch"], stage["seq_len"]) == (12, 12 * 4 * 32, 4, 32)
    assert [c["step"] for c in json.loads((rel / "lineage/00-pretrain/checkpoints.json").read_text())] == [8, 12]
    assert release["code_version"]["commit"] and release["packages"]["torch"]
    assert json.loads((rel / "generation_config.json").read_text())["do_sample"] is True
    card = (rel / "README.md").read_text()
    model = release["model"]
    for fact in ("Qwen3MoeForCausalLM", f"{model['params_total']:,}", f"{model['params_active']:,}", "FLOPs per token",
                 "1,536", "PSF-2.0", "stdlib-api-docs", "humaneval.pass@1", "val/loss",
                 "](metrics.png)"):
        assert fact in card, fact
    sums = (rel / SUMS).read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in sums] == sorted(
        p.relative_to(rel).as_posix() for p in rel.rglob("*") if p.is_file() and p.name != SUMS)


def test_transformers_loads_the_trained_weights_offline(trained: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pretrain.checkpoint_state import load_model_weights
    from pretrain.model.config import MoEModelConfig
    from pretrain.model.transformer import Transformer

    rel = trained["release"]
    hf = AutoModelForCausalLM.from_pretrained(rel, local_files_only=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(rel, local_files_only=True)
    ids = tok("def main(", return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 6 and isinstance(tok.decode(out[0]), str)
    cfg = MoEModelConfig.model_validate(json.loads((rel / "config.json").read_text())["atom_config"])
    ours = Transformer(cfg).eval()
    load_model_weights(ours, trained["run"] / "checkpoints/step_00000012")
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-4


def test_two_builds_are_byte_identical(trained: dict[str, Path], tmp_path: Path) -> None:
    again = build_release(trained["run"], tmp_path / "again")
    first = trained["release"]
    assert (again / SUMS).read_bytes() == (first / SUMS).read_bytes()
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel
    build_release(trained["run"], again)  # an earlier release is replaced in place
    assert (again / SUMS).read_bytes() == (first / SUMS).read_bytes()


def test_audit_passes_on_an_untouched_release(trained: dict[str, Path], capsys) -> None:
    report = audit_release(trained["release"])
    assert report.ok, failures(report)
    assert main(["audit", str(trained["release"])]) == 0
    assert "PASS" in capsys.readouterr().out


def test_audit_with_the_dataset_rehashes_shards_and_trained_tokens(trained: dict[str, Path], tmp_path: Path) -> None:
    report = audit_release(trained["release"], data=[str(trained["data"])], load_weights=False)
    assert report.ok, failures(report)
    assert any("trained tokens of stage 0" in c.check for c in report.checks)
    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    header, records = read_train_manifest(trained["run"] / "train_tokens.jsonl")
    window = int(trained_windows(header, records)[0, 0])
    position = window * 32  # a token the first step read: the shard hash and the trained digest break
    shard = next(s for s in json.loads((data / "manifest.json").read_text())["shards"]
                 if s["token_offset"] <= position < s["token_offset"] + s["n_tokens"])
    tokens = np.fromfile(data / shard["path"], dtype="<u2")
    tokens[position - shard["token_offset"]] ^= 1
    tokens.tofile(data / shard["path"])
    bad = failures(audit_release(trained["release"], data=[str(data)], load_weights=False))
    assert f"{data}/{shard['path']}: sha256 and size" in bad
    assert f"--data {data}: trained tokens of stage 0 hash to the recorded digest" in bad


def test_licenses_checked_against_the_allow_list(trained: dict[str, Path]) -> None:
    bad = failures(audit_release(trained["release"], allow_licenses=["MIT"], load_weights=False))
    assert bad == ["lineage/00-pretrain/data/provenance.parquet: trained documents' licenses within allow-list"]
    assert audit_release(trained["release"], allow_licenses=["PSF-2.0"], load_weights=False).ok


def _flip_weight_byte(rel: Path) -> None:
    data = bytearray((rel / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (rel / "model.safetensors").write_bytes(bytes(data))


def _edit_card(rel: Path) -> None:
    card = rel / "README.md"
    card.write_text(card.read_text().replace("mixture-of-experts", "dense"))


def _edit_manifest_count(rel: Path) -> None:
    file = rel / "lineage/00-pretrain/data/manifest.json"
    manifest = json.loads(file.read_text())
    manifest["sources"]["stdlib-api-docs"]["tokens"] += 1000
    file.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")


def _remove_trained_license(rel: Path) -> None:
    file = rel / "lineage/00-pretrain/data/provenance.parquet"
    header, records = read_train_manifest(rel / "lineage/00-pretrain/train_tokens.jsonl")
    manifest = json.loads((rel / "lineage/00-pretrain/data/manifest.json").read_text())
    docs = StreamDocuments.read(file.parent, manifest)
    first = int(np.flatnonzero(touched_documents(docs.ends, trained_windows(header, records), 32))[0])
    table = pq.read_table(file)
    licenses = table.column("license").to_pylist()
    licenses[first] = ""
    table = table.set_column(table.schema.get_field_index("license"), "license", pa.array(licenses, pa.string()))
    pq.write_table(table, file)


def _train_on_a_held_out_window(rel: Path) -> None:
    """Drop a window from the excluded list: it would be trained on although it reads a validation document."""
    file = rel / "lineage/00-pretrain/train_tokens.jsonl"
    lines = file.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["stream"]["held_out"] and header["stream"]["held_out_documents"]
    header["stream"]["held_out"] = header["stream"]["held_out"][1:]
    file.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")


TAMPERING = {
    "weights byte flipped": (_flip_weight_byte, "model.safetensors: sha256 matches SHA256SUMS", None),
    "model card edited": (_edit_card, "README.md: sha256 matches SHA256SUMS",
                          "README.md: model card generated from release.json"),
    "manifest count edited": (_edit_manifest_count, "lineage/00-pretrain/data/manifest.json: sha256 matches SHA256SUMS",
                              "lineage/00-pretrain/data/manifest.json: pinned by the training manifest"),
    "file deleted": (lambda rel: (rel / "tokenizer_config.json").unlink(), "tokenizer_config.json: present", None),
    "stray file added": (lambda rel: (rel / "lineage/notes.txt").write_text("hi"),
                         "lineage/notes.txt: listed in SHA256SUMS", None),
    "license removed from provenance": (
        _remove_trained_license, "lineage/00-pretrain/data/provenance.parquet: sha256 matches SHA256SUMS",
        "lineage/00-pretrain/data/provenance.parquet: every trained document has a license"),
    "held-out window trained on": (
        _train_on_a_held_out_window, "lineage/00-pretrain/train_tokens.jsonl: sha256 matches SHA256SUMS",
        "lineage/00-pretrain/train_tokens.jsonl: held-out documents never trained on"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_caught_and_named(trained: dict[str, Path], tmp_path: Path, case: str) -> None:
    tamper, named, named_even_if_resummed = TAMPERING[case]
    rel = tampered(trained, tmp_path)
    tamper(rel)
    report = audit_release(rel)
    assert not report.ok and named in failures(report), failures(report)
    assert main(["audit", str(rel)]) == 1
    if named_even_if_resummed:  # a forger who also rewrites SHA256SUMS is still caught
        write_sums(rel)
        report = audit_release(rel, load_weights=False)
        assert named_even_if_resummed in failures(report), failures(report)


def test_release_of_a_lineage(trained: dict[str, Path], tmp_path: Path) -> None:
    stages = lineage(trained["stage2"])
    assert [(s.run_dir.name, s.step) for s in stages] == [("pretrain", 8), ("stage2", 4)]
    rel = build_release(trained["stage2"], tmp_path / "rel2", name="atom-tiny")
    release = json.loads((rel / "release.json").read_text())
    assert [s["dir"] for s in release["stages"]] == ["lineage/00-pretrain", "lineage/01-midtrain"]
    assert release["tokens_total"] == 8 * 4 * 32 + 4 * 2 * 64 and release["stages"][1]["parent"]["step"] == 8
    assert release["model"]["config"]["rope"]["scaling"] == "yarn"
    assert (rel / "lineage/01-midtrain/evals.json").is_file()
    assert "pretrain -> midtrain" in (rel / "README.md").read_text()
    report = audit_release(rel)
    assert report.ok, failures(report)
    # The second stage is tied to the first: a midtrain.json naming another parent is caught.
    meta = json.loads((rel / "lineage/01-midtrain/midtrain.json").read_text())
    meta["parent"]["step"] = 12
    (rel / "lineage/01-midtrain/midtrain.json").write_text(json.dumps(meta))
    write_sums(rel)
    assert failures(audit_release(rel, load_weights=False)) == [
        "lineage/01-midtrain/midtrain.json: parent is the previous stage"]
    assert parent_checkpoint(trained["run"], {}) is None


def test_release_of_a_run_balanced_by_selection_bias(trained: dict[str, Path], tmp_path: Path) -> None:
    """Auxiliary-loss-free balancing (sigmoid scores + a moving selection bias, DeepSeek-V3's default) is
    released as Dots1: transformers gives the trained model's logits, the bias included, and the audit passes."""
    from transformers import AutoModelForCausalLM

    from pretrain.checkpoint_state import load_model_weights
    from pretrain.config import PretrainConfig
    from pretrain.model.config import MoEModelConfig
    from pretrain.model.hf_export import import_hf
    from pretrain.model.transformer import Transformer
    from pretrain.stage import run

    base = tiny_pretrain(trained["data"], tmp_path / "biased", steps=4).to_dict()
    base["model"]["moe"] |= {"score_func": "sigmoid", "bias_update_rate": 0.01, "aux_loss_weight": 0.0}
    run(PretrainConfig.model_validate(base))
    rel = build_release(tmp_path / "biased", tmp_path / "rel")
    assert json.loads((rel / "release.json").read_text())["model"]["architecture"] == "Dots1ForCausalLM"
    ours = Transformer(MoEModelConfig.model_validate(base["model"])).eval()
    load_model_weights(ours, tmp_path / "biased/checkpoints/step_00000004")
    assert all(moe.router.expert_bias.abs().max() > 0 for moe in ours.moe_layers().values())  # the bias moved
    hf = AutoModelForCausalLM.from_pretrained(rel, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-4
        assert torch.equal(import_hf(rel).eval()(ids).logits, ours(ids).logits)
    report = audit_release(rel)
    assert report.ok, failures(report)


def test_bad_input_exits_2_and_leaves_nothing(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "train_tokens.jsonl"):
        shutil.copyfile(trained["run"] / name, bare / name)
    assert main(["release", str(bare), "--out", str(tmp_path / "r1")]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists() and not list(tmp_path.glob(".r1*"))

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["release", str(trained["run"]), "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in busy.iterdir()] == ["keep.txt"]

    moved = tmp_path / "moved"  # the data the run trained on is gone
    shutil.copytree(trained["run"], moved)
    lines = (moved / "train_tokens.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["stream"]["path"] = str(tmp_path / "nowhere")
    (moved / "train_tokens.jsonl").write_text("\n".join([json.dumps(header, sort_keys=True), *lines[1:]]) + "\n")
    assert main(["release", str(moved), "--out", str(tmp_path / "r2")]) == 2
    assert "data manifest is missing" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() and not list(tmp_path.glob(".r2*"))

    assert main(["audit", str(tmp_path / "missing")]) == 2
    assert main(["audit", str(trained["data"]), "--data", str(trained["data"])]) == 2


def _change(path: tuple, to=None, by=None):
    def edit(release: dict) -> None:
        node = release
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = node[path[-1]] + by if by is not None else to
    return edit


# (edit of release.json, the field the failure must name): each is recomputed from the other files.
RELEASE_FIELDS = {
    "tokens_total": (_change(("tokens_total",), by=1), "tokens_total"),
    "steps_total": (_change(("steps_total",), by=1), "steps_total"),
    "weights step": (_change(("weights", "step"), by=-1), "weights.step"),
    "eos_id": (_change(("tokenizer", "eos_id"), to=1), "tokenizer.eos_id"),
    "vocab_size": (_change(("tokenizer", "vocab_size"), by=1), "tokenizer.vocab_size"),
    "params_total": (_change(("model", "params_total"), by=1), "model.params_total"),
    "params_active": (_change(("model", "params_active"), by=-1), "model.params_active"),
    "flops_per_token": (_change(("model", "flops_per_token"), by=6), "model.flops_per_token"),
    "seq_len": (_change(("stages", 0, "seq_len"), by=32), "stages[0].seq_len"),
    "seed": (_change(("stages", 0, "seed"), by=1), "stages[0].seed"),
    "data n_tokens": (_change(("stages", 0, "data", "n_tokens"), by=1), "stages[0].data.n_tokens"),
    "data source tokens": (_change(("stages", 0, "data", "sources", "stdlib-api-docs", "tokens"), by=-1),
                           "stages[0].data.sources.stdlib-api-docs.tokens"),
    "allow_licenses": (_change(("stages", 0, "data", "allow_licenses"), to=["MIT"]), "stages[0].data.allow_licenses"),
    "has_plot": (lambda r: r.update(has_plot=not r["has_plot"]), "has_plot"),
    "generation": (_change(("generation", "temperature"), to=0.1), "generation.temperature"),
}


@pytest.mark.parametrize("case", list(RELEASE_FIELDS))
def test_an_edited_release_number_is_recomputed_and_named(trained: dict[str, Path], tmp_path: Path,
                                                          case: str) -> None:
    """A forger who edits a number in release.json and regenerates the card and SHA256SUMS is still caught."""
    from release.card import render_card
    from release.manifest import Release

    edit, field = RELEASE_FIELDS[case]
    rel = tampered(trained, tmp_path)
    release = json.loads((rel / "release.json").read_text())
    edit(release)
    (rel / "release.json").write_text(json.dumps(release, sort_keys=True, indent=2) + "\n")
    (rel / "README.md").write_text(render_card(Release.parse(release, "edited")), encoding="utf-8")
    write_sums(rel)
    report = audit_release(rel, load_weights=False)
    assert any(c.file == "release.json" and field in f"{c.check}: {c.detail}" for c in report.failures), \
        failures(report)


def test_a_copied_croissant_file_is_regenerated_from_its_manifest(trained: dict[str, Path], tmp_path: Path) -> None:
    rel = tampered(trained, tmp_path)
    file = rel / "lineage/00-pretrain/data/croissant.json"
    doc = json.loads(file.read_text())
    doc["distribution"][1]["contentSize"] = "1 B"
    file.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n")
    write_sums(rel)
    assert failures(audit_release(rel, load_weights=False)) == [
        "lineage/00-pretrain/data/croissant.json: regenerated from manifest.json byte for byte"]


@pytest.mark.parametrize("edit, named", [
    (lambda r: r.update(schema="atom.release/9"), "'atom.release/9' is not a version this atom reads"),
    (lambda r: r["stages"][0].update(tokens="12"), "stages[0].tokens: input should be a valid integer"),
    (lambda r: r["model"].update(experts=8), "model.experts: extra inputs are not permitted"),
    (lambda r: r.pop("tokens_total"), "tokens_total: field required"),
])
def test_a_release_json_of_another_schema_is_refused_naming_the_key(trained: dict[str, Path], tmp_path: Path,
                                                                   edit: Any, named: str) -> None:
    """A foreign-version or hand-edited release.json fails one check that names the version or the key,
    instead of a KeyError half way through the audit."""
    rel = tampered(trained, tmp_path)
    release = json.loads((rel / "release.json").read_text())
    edit(release)
    (rel / "release.json").write_text(json.dumps(release, sort_keys=True, indent=2) + "\n")
    write_sums(rel)
    report = audit_release(rel, load_weights=False)
    schema = [c for c in report.failures if c.check == "schema atom.release/1"]
    assert schema and named in schema[0].detail, failures(report)
