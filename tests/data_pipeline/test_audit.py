"""`atom audit`: an untouched dataset/mixture passes; each kind of tampering fails, naming the file."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from atom.cli import main
from core.manifest import file_record
from data_pipeline.audit import audit_data
from tests.data_pipeline.tokens_fixtures import built


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return built(tmp_path_factory)


@pytest.fixture
def copy(data, tmp_path):
    """A private copy of the dataset and mixture (same relative layout) to tamper with."""
    shutil.copytree(data["dataset"], tmp_path / "dataset")
    shutil.copytree(data["mixture"], tmp_path / "mixture")
    return tmp_path


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _save(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_untouched_dataset_and_mixture_pass(data, capsys):
    for path in (data["dataset"], data["mixture"]):
        report = audit_data(path)
        assert report.ok, report.render()
        assert main(["audit", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_flipping_one_byte_in_any_shard_fails_naming_it(copy, capsys):
    shards = [s["path"] for s in _manifest(copy / "dataset")["shards"]]
    for shard in shards:
        path = copy / "dataset" / shard
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
        report = audit_data(copy / "dataset")
        assert not report.ok and shard in report.failing_files()
        assert main(["audit", str(copy / "dataset")]) == 1
        assert f"FAIL {shard}: sha256 and size" in capsys.readouterr().out
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    assert audit_data(copy / "dataset").ok


def test_deleting_a_shard_fails_naming_it(copy):
    (copy / "dataset" / "tokens" / "00001.ds").unlink()
    report = audit_data(copy / "dataset")
    assert "tokens/00001.ds" in report.failing_files()
    assert any("missing" in c.detail for c in report.failures)


def test_editing_a_count_in_the_manifest_fails_naming_it(copy):
    manifest = _manifest(copy / "dataset")
    manifest["shards"][0]["n_tokens"] += 1
    _save(copy / "dataset", manifest)
    report = audit_data(copy / "dataset")
    assert "manifest.json" in report.failing_files()
    assert any(c.check == "token count" for c in report.failures)

    manifest = _manifest(copy / "mixture")
    manifest["sources"]["stdlib-api-docs"]["docs"] -= 1
    _save(copy / "mixture", manifest)
    assert "manifest.json" in audit_data(copy / "mixture").failing_files()


def test_removing_a_license_fails_naming_the_file(copy):
    # in the provenance table (re-hashed in the manifest, so only the license check can catch it)
    root = copy / "dataset"
    table = pq.read_table(root / "provenance.parquet")
    licenses = table.column("license").to_pylist()
    licenses[7] = ""
    table = table.set_column(table.schema.get_field_index("license"), "license",
                             __import__("pyarrow").array(licenses))
    pq.write_table(table, root / "provenance.parquet")
    manifest = _manifest(root)
    manifest["provenance"].update(file_record(root / "provenance.parquet", root))
    _save(root, manifest)
    report = audit_data(root)
    failing = {(c.file, c.check) for c in report.failures}
    assert ("provenance.parquet", "every document has a license") in failing

    # in the manifest's per-source record
    manifest = _manifest(copy / "mixture")
    manifest["sources"]["stdlib-module-docs"]["licenses"] = {}
    _save(copy / "mixture", manifest)
    failures = {(c.file, c.check) for c in audit_data(copy / "mixture").failures}
    assert ("manifest.json", "source has a license") in failures


def test_allow_list_from_cli_and_config(data, tmp_path, capsys):
    assert main(["audit", str(data["dataset"]), "--allow-license", "MIT"]) == 1
    assert "licenses within allow-list" in capsys.readouterr().out
    assert main(["audit", str(data["dataset"]), "--allow-license", "PSF-2.0"]) == 0
    cfg = tmp_path / "policy.yaml"
    cfg.write_text("allow_licenses: [Apache-2.0]\n")
    assert main(["audit", str(data["mixture"]), "--config", str(cfg)]) == 1
    cfg.write_text("allow_licenses: [Apache-2.0, PSF-2.0]\n")
    assert main(["audit", str(data["mixture"]), "--config", str(cfg)]) == 0


def test_mixture_notices_tampered_sequence_and_datasets(copy):
    seq = copy / "mixture" / "sequence.npy"
    raw = bytearray(seq.read_bytes())
    raw[-3] ^= 0x10
    seq.write_bytes(bytes(raw))
    assert "sequence.npy" in audit_data(copy / "mixture").failing_files()
    seq.write_bytes(bytes(raw[:-3] + bytes([raw[-3] ^ 0x10]) + raw[-2:]))
    assert audit_data(copy / "mixture").ok
    shard = copy / "dataset" / "tokens" / "00002.ds"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert "../dataset/tokens/00002.ds" in audit_data(copy / "mixture").failing_files()
    shutil.rmtree(copy / "dataset")
    assert "../dataset/manifest.json" in audit_data(copy / "mixture").failing_files()


def test_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert "no such curation run, dataset or mixture" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) == 1
    assert "FAIL manifest.json: present" in capsys.readouterr().out


def _names(report, file: str, field: str) -> bool:
    """Some failing check is on `file` and names `field` (in the check or its detail)."""
    return any(c.file == file and field in f"{c.check}: {c.detail}" for c in report.failures)


def _bump(path, by=1):
    def edit(m):
        *keys, last = path
        for k in keys:
            m = m[k]
        m[last] += by
    return edit


def _set(path, value):
    def edit(m):
        *keys, last = path
        for k in keys:
            m = m[k]
        m[last] = value
    return edit


# (edit of manifest.json, the field the failure must name); each value is recomputed from the files.
DATASET_FIELDS = {
    "documents_kept": (_bump(("curation", "stages", 1, "documents_kept"), -1), "curation.stages[1].documents_kept"),
    "curation sources": (_bump(("curation", "sources", "stdlib-api-docs", "docs")), "curation.sources"),
    "eos_id": (_set(("tokenizer", "eos_id"), 1), "tokenizer.eos_id"),
    "pad_id": (_set(("tokenizer", "pad_id"), 0), "tokenizer.pad_id"),
    "eos_token": (_set(("tokenizer", "eos_token"), "<|pad|>"), "tokenizer.eos_token"),
    "vocab_size": (_set(("tokenizer", "vocab_size"), 2048), "tokenizer.vocab_size"),
    "dtype": (_set(("dtype",), "uint32"), "dtype"),
    "n_tokens": (_bump(("n_tokens",)), "n_tokens"),
    "n_docs": (_bump(("n_docs",), -1), "n_docs"),
    "shard n_tokens": (_bump(("shards", 2, "n_tokens"), -1), "shards[2].n_tokens"),
    "shard n_docs": (_bump(("shards", 1, "n_docs")), "shards[1].n_docs"),
    "shard token_offset": (_bump(("shards", 1, "token_offset")), "shards[1].token_offset"),
    "shard bytes": (_bump(("shards", 0, "bytes"), 2), "shards[0].bytes"),
    "provenance rows": (_bump(("provenance", "rows")), "provenance.rows"),
    "source tokens": (_bump(("sources", "stdlib-module-docs", "tokens")), "sources.stdlib-module-docs.tokens"),
    "license count": (_bump(("sources", "stdlib-api-docs", "licenses", "PSF-2.0")),
                      "sources.stdlib-api-docs.licenses.PSF-2.0"),
    "kind": (_set(("kind",), "mixture"), "kind"),
    "shard_tokens": (_set(("config", "shard_tokens"), 50_000), "config.shard_tokens"),
}


@pytest.mark.parametrize("case", sorted(DATASET_FIELDS))
def test_an_edited_dataset_manifest_value_fails_naming_field_and_file(copy, case):
    edit, field = DATASET_FIELDS[case]
    manifest = _manifest(copy / "dataset")
    edit(manifest)
    _save(copy / "dataset", manifest)
    report = audit_data(copy / "dataset")
    assert _names(report, "manifest.json", field), report.render()
    # the files the manifest describes are what they were: none of them is blamed
    assert report.failing_files() <= {"manifest.json", "croissant.json"}, report.render()


MIXTURE_FIELDS = {
    "dataset n_tokens": (_bump(("datasets", 0, "n_tokens")), "datasets[0].n_tokens"),
    "dataset n_docs": (_bump(("datasets", 0, "n_docs"), -1), "datasets[0].n_docs"),
    "eos_id": (_set(("tokenizer", "eos_id"), 1), "tokenizer.eos_id"),
    "vocab_size": (_set(("tokenizer", "vocab_size"), 2048), "tokenizer.vocab_size"),
    "dtype": (_set(("dtype",), "uint32"), "dtype"),
    "target_tokens": (_bump(("target_tokens",), 1000), "target_tokens"),
    "target": (_bump(("sources", "stdlib-api-docs", "target_tokens"), -10), "sources.stdlib-api-docs.target_tokens"),
    "ratio": (_set(("sources", "stdlib-api-docs", "ratio"), 0.75), "sources.stdlib-api-docs.ratio"),
    "available": (_bump(("sources", "stdlib-module-docs", "available_tokens")),
                  "sources.stdlib-module-docs.available_tokens"),
    "available docs": (_bump(("sources", "stdlib-module-docs", "available_docs")),
                       "sources.stdlib-module-docs.available_docs"),
    "repetitions": (_set(("sources", "stdlib-module-docs", "repetitions"), 2.0),
                    "sources.stdlib-module-docs.repetitions"),
    "max_epoch": (_bump(("sources", "stdlib-module-docs", "max_epoch"), -1), "sources.stdlib-module-docs.max_epoch"),
    "docs": (_bump(("sources", "stdlib-api-docs", "docs"), -1), "sources.stdlib-api-docs.docs"),
    "license count": (_bump(("sources", "stdlib-module-docs", "licenses", "PSF-2.0")),
                      "sources.stdlib-module-docs.licenses.PSF-2.0"),
    "excluded": (_set(("excluded_sources",), {"stdlib-api-docs": {"tokens": 1, "docs": 1}}), "excluded_sources"),
    "curation": (_bump(("curation", 0, "stages", 1, "documents_kept"), -1), "curation[0].stages[1].documents_kept"),
}


@pytest.mark.parametrize("case", sorted(MIXTURE_FIELDS))
def test_an_edited_mixture_manifest_value_fails_naming_field_and_file(copy, case):
    edit, field = MIXTURE_FIELDS[case]
    manifest = _manifest(copy / "mixture")
    edit(manifest)
    _save(copy / "mixture", manifest)
    report = audit_data(copy / "mixture")
    assert _names(report, "manifest.json", field), report.render()
    assert report.failing_files() <= {"manifest.json", "croissant.json"}, report.render()


def test_edited_eos_id_blames_the_manifest_not_the_shards(copy):
    manifest = _manifest(copy / "dataset")
    manifest["tokenizer"]["eos_id"] = manifest["tokenizer"]["pad_id"]
    _save(copy / "dataset", manifest)
    report = audit_data(copy / "dataset")
    assert ("manifest.json", "tokenizer.eos_id") in {(c.file, c.check) for c in report.failures}
    assert not any(f.startswith("tokens/") or f.startswith("tokenizer/") for f in report.failing_files())
    assert not any("EOS" in c.detail for c in report.failures)


@pytest.mark.parametrize("kind", ["dataset", "mixture"])
@pytest.mark.parametrize("edit", ["contentSize", "sha256", "description", "license", "reformatted"])
def test_croissant_is_regenerated_from_the_manifest_byte_for_byte(copy, kind, edit):
    path = copy / kind / "croissant.json"
    doc = json.loads(path.read_text())
    if edit == "contentSize":
        doc["distribution"][1]["contentSize"] = "1 B"
    elif edit == "sha256":
        doc["distribution"][0]["sha256"] = "0" * 64
    elif edit == "description":
        doc["description"] = doc["description"].replace("documents", "docs", 1)
    elif edit == "license":
        doc["license"] = ["https://spdx.org/licenses/MIT.html"]
    path.write_text(json.dumps(doc, indent=1 if edit == "reformatted" else 2, sort_keys=True) + "\n")
    report = audit_data(copy / kind)
    assert report.failing_files() == {"croissant.json"}, report.render()
    if edit != "reformatted":
        assert _names(report, "croissant.json", edit), report.render()


def test_curation_is_compared_with_the_curated_runs_manifest_when_present(data, tmp_path):
    from data_pipeline.tokens.tokenize import run as tokenize
    from tests.data_pipeline.tokens_fixtures import tokenize_config

    curated = tmp_path / "curated_run"
    shutil.copytree(data["curated"], curated)
    ds = tokenize(tokenize_config(tmp_path / "dataset", curated, data["tokenizer"]))
    report = audit_data(ds)
    assert report.ok and report.summary["curation"] == f"compared with {curated / 'manifest.json'}"

    # the curated run's own count changes: the dataset no longer says what its input said
    cur = _manifest(curated)
    cur["stages"][1]["documents_kept"] -= 1
    _save(curated, cur)
    report = audit_data(ds)
    assert _names(report, "manifest.json", "curation.stages[1].documents_kept"), report.render()
    assert _names(report, "manifest.json", "curation.manifest_sha256"), report.render()

    # without the curated run there is nothing to compare with, and the audit says so
    shutil.rmtree(curated)
    report = audit_data(ds)
    assert report.ok and report.summary["curation"].startswith("not compared")


@pytest.mark.parametrize("kind, edit, key", [
    ("dataset", lambda m: m.update(n_tokens=str(m["n_tokens"])), "n_tokens"),
    ("dataset", lambda m: m["shards"][0].pop("token_offset"), "shards[0].token_offset"),
    ("dataset", lambda m: m.update(surprise=1), "surprise"),
    ("mixture", lambda m: m.pop("sequence"), "sequence"),
    ("mixture", lambda m: m["sources"][next(iter(m["sources"]))].update(docs=-1), "docs"),
])
def test_manifest_off_its_schema_fails_naming_the_key(copy, kind, edit, key, capsys):
    """A manifest that does not have the shape of its schema version is one failed check that names the key
    and the version (not a KeyError, and not checks run on values of the wrong type); the readers refuse it."""
    from core.manifest_model import ManifestError
    from data_pipeline.tokens.reader import TokenDataset, TokenMixture

    manifest = _manifest(copy / kind)
    edit(manifest)
    _save(copy / kind, manifest)
    assert main(["audit", str(copy / kind)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "manifest.json: schema" in line)
    assert key in line and f"atom.{'tokens' if kind == 'dataset' else 'mixture'}/1" in line, out
    with pytest.raises(ManifestError, match=key.replace("[", r"\[").replace("]", r"\]")):
        (TokenDataset if kind == "dataset" else TokenMixture)(copy / kind)


def test_manifest_of_another_schema_version_is_refused_naming_it(copy, capsys):
    manifest = _manifest(copy / "dataset")
    manifest["schema"] = "atom.tokens/9"
    _save(copy / "dataset", manifest)
    assert main(["audit", str(copy / "dataset")]) == 1
    assert "unknown schema 'atom.tokens/9'" in capsys.readouterr().out


def test_dataset_and_mixture_manifests_record_what_they_read(data):
    """The input fingerprint travels in the manifest (a release ships it), equal to the run's inputs.json."""
    for path in (data["dataset"], data["mixture"]):
        recorded = json.loads((path / "inputs.json").read_text())["inputs"]
        assert recorded and _manifest(path)["inputs"] == recorded
        assert all(":" in digest and "/" not in digest.split(":", 1)[0] for digest in recorded.values())
