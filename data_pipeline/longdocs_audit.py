"""`atom audit RUN` on an `atom longdocs` run: the selection is redone from the parent run and compared.

    manifest field                      recomputed from
    outputs[i] path, bytes, sha256,     the curated shards (as for a curation run), and the tokenize input
    documents                           contract
    parent.manifest_sha256              the parent run's manifest.json (found at parent.path, as given or
                                        beside this run)
    stages[:-1]                         the parent's stages (inherited unchanged)
    stages[-1] (longdocs) documents_in, the parent's rows put through the run's recorded config (config.yaml):
    dropped, bytes_in, documents_kept,  which documents are kept, in order, and why the others were dropped
    bytes_out
    sources.<name> documents, bytes     the curated rows of that source
    config_sha256                       not recomputable here: recorded as given
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from core.audit import AuditReport, agree
from core.config import ConfigError, load_config
from core.manifest import sha256_file
from core.rundir import CONFIG_FILE
from data_pipeline.curate.audit import (
    check_allowed_licenses,
    check_contract,
    check_outputs,
    check_required,
    check_stated_chain,
)
from data_pipeline.longdocs import LongDocsConfig, drop_reason
from data_pipeline.tokens.curated import CURATED_DIR, MANIFEST, open_curated


def audit_longdocs(root: Path, manifest: dict[str, Any], report: AuditReport, allow: list[str] | None) -> None:
    """Every check in the module docstring on the longdocs run at `root`."""
    if not check_required(manifest, {"stages": list, "outputs": list, "sources": dict, "parent": dict}, report):
        return
    curated = check_outputs(root, manifest, report)
    check_contract(root, report)
    stage = manifest["stages"][-1] if manifest["stages"] else {}
    if not report.add(MANIFEST, "last stage is longdocs", isinstance(stage, dict) and stage.get("name") == "longdocs",
                      f"last stage {stage!r}"):
        return
    check_stated_chain({"stages": [stage]}, report)
    rows = pq.read_table(root / CURATED_DIR, columns=["id", "text", "source", "license"]).to_pylist() \
        if curated is not None else None
    if rows is not None:
        report.summary.update({"documents": len(rows), "outputs": len(manifest["outputs"])})
        _check_sources(manifest, rows, report, allow)
    parent = _parent(root, manifest, report)
    config = _config(root, report)
    if parent is not None and config is not None and rows is not None:
        _check_selection(manifest, stage, parent, config, rows, report)


def _check_sources(manifest: dict[str, Any], rows: list[dict[str, Any]], report: AuditReport,
                   allow: list[str] | None) -> None:
    counted: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = counted.setdefault(row["source"], {"documents": 0, "bytes": 0})
        entry["documents"] += 1
        entry["bytes"] += len(row["text"].encode())
    stated = {name: {"documents": s.get("documents"), "bytes": s.get("bytes")}
              for name, s in manifest["sources"].items() if isinstance(s, dict)}
    agree(report, MANIFEST, "sources (documents, bytes)", stated, dict(sorted(counted.items())), CURATED_DIR)
    check_allowed_licenses(rows, allow, report)


def _parent(root: Path, manifest: dict[str, Any], report: AuditReport) -> Path | None:
    """The parent run, found where the manifest says (or beside this run) with the pinned manifest digest."""
    recorded = str(manifest["parent"].get("path", ""))
    candidates = [Path(recorded), root.parent / Path(recorded).name]
    found = next((p for p in candidates if recorded and (p / MANIFEST).is_file()), None)
    if not report.add(MANIFEST, "parent run present", found is not None,
                      f"parent.path {recorded!r}: no {MANIFEST} there or beside {root}"):
        return None
    assert found is not None
    digest = sha256_file(found / MANIFEST)
    if not agree(report, MANIFEST, "parent.manifest_sha256", manifest["parent"].get("manifest_sha256"), digest,
                 str(found / MANIFEST)):
        return None
    return found


def _config(root: Path, report: AuditReport) -> LongDocsConfig | None:
    try:
        return load_config(LongDocsConfig, root / CONFIG_FILE)
    except ConfigError as exc:
        report.add(CONFIG_FILE, "the run's recorded config", False, str(exc))
        return None


def _check_selection(manifest: dict[str, Any], stage: dict[str, Any], parent: Path, config: LongDocsConfig,
                     rows: list[dict[str, Any]], report: AuditReport) -> None:
    source = open_curated(parent, verify_outputs=False)
    agree(report, MANIFEST, "stages[:-1] (inherited)", manifest["stages"][:-1], source.manifest.get("stages", []),
          str(parent / MANIFEST))
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    docs_in = bytes_in = bytes_out = 0
    for _, batch in source.batches(10_000, columns=("id", "text", "source")):
        for row in batch.to_pylist():
            size = len(row["text"].encode())
            docs_in += 1
            bytes_in += size
            reason = drop_reason(config, row["source"], row["text"])
            if reason is not None:
                dropped[reason] += 1
            else:
                kept.append(row["id"])
                bytes_out += size
    where = f"{parent} through {CONFIG_FILE}"
    for field, value in (("documents_in", docs_in), ("documents_kept", len(kept)), ("bytes_in", bytes_in),
                         ("bytes_out", bytes_out), ("dropped", dict(sorted(dropped.items())))):
        agree(report, MANIFEST, f"stages[-1].{field}", stage.get(field), value, where)
    report.add(CURATED_DIR, "the selected documents, in order", [row["id"] for row in rows] == kept,
               f"{len(rows)} curated rows, {len(kept)} selected from {parent}")
