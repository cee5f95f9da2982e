"""The curated Parquet shards and the run manifest.

`CuratedWriter`: `curated/<rank>.parquet`, columns exactly id, text, source, license, url,
source_version, language (all strings), documents in input order; written to a temporary file and
renamed when the task's input is exhausted, so a killed task never leaves half a shard.
`WriteManifest` (one task, after everything): sums the per-task counts into `manifest.json`
(schema atom.curation/1) and writes `reports/decontamination.json` and `reports/throughput.json`.
The manifest holds no absolute path: inputs are named by content (`manifest.content_name`).
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from core.manifest import canonical_sha256, content_name, file_record
from core.rundir import recorded_inputs, write_json

MANIFEST_SCHEMA = "atom.curation/1"
COLUMNS = ("id", "text", "source", "license", "url", "source_version", "language")
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
OUTPUT_COUNTS = "_output"


class CuratedWriter(PipelineStep):
    type = "💽 - WRITER"
    name = "atom curated parquet"

    def __init__(self, output_dir: str, counts_dir: str, compression: str, row_group_size: int):
        super().__init__()
        self.output_dir = output_dir
        self.counts_dir = counts_dir
        self.compression = None if compression == "none" else compression
        self.row_group_size = row_group_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.output_dir) / f"{rank:05d}.parquet"
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        writer = None
        rows: dict[str, list[str]] = {name: [] for name in COLUMNS}
        per_source: dict[str, Counter] = {}
        total = 0

        def flush():
            nonlocal writer
            if not rows["id"]:
                return
            if writer is None:
                writer = pq.ParquetWriter(tmp, SCHEMA, compression=self.compression)
            writer.write_table(pa.table(rows, schema=SCHEMA))
            for values in rows.values():
                values.clear()

        for doc in data or ():
            meta = doc.metadata
            values = (doc.id, doc.text, meta["source"], meta["license"], meta["url"], meta["source_version"],
                      meta.get("language", "und"))
            for name, value in zip(COLUMNS, values, strict=True):
                rows[name].append(value)
            tally = per_source.setdefault(meta["source"], Counter())
            tally["documents"] += 1
            tally["bytes"] += len(doc.text.encode("utf-8", "surrogatepass"))
            total += 1
            if len(rows["id"]) >= self.row_group_size:
                flush()
            yield doc
        flush()
        if writer is not None:
            writer.close()
            os.replace(tmp, path)
        write_json(Path(self.counts_dir) / OUTPUT_COUNTS / f"{rank:05d}.json",
                   {"documents": total, "sources": {k: dict(v) for k, v in sorted(per_source.items())}})


def _sum_counts(files: list[Path]) -> dict[str, Any]:
    total: dict[str, Any] = {"documents_in": 0, "documents_kept": 0, "bytes_in": 0, "bytes_out": 0,
                             "documents_modified": 0, "seconds": 0.0, "dropped": Counter()}
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        for key in ("documents_in", "documents_kept", "bytes_in", "bytes_out", "documents_modified", "seconds"):
            total[key] += data.get(key, 0)
        total["dropped"].update(data.get("dropped", {}))
    return total


class WriteManifest(PipelineStep):
    type = "🧮 - ATOM"
    name = "atom manifest"

    def __init__(self, run_dir: str, stages: list[str], sources: list[dict], config: dict[str, Any], tasks: int):
        super().__init__()
        self.run_dir = run_dir
        self.stages = stages
        self.sources = sources
        self.config = config  # recorded config; source paths are named by content here, from the read counts
        self.tasks = tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        manifest = build_manifest(Path(self.run_dir), self.stages, self.sources, self.config, self.tasks)
        logger.info(f"manifest: {len(manifest['outputs'])} curated files, "
                    f"{sum(o['documents'] for o in manifest['outputs'])} documents")
        return
        yield


def decontamination_report(matches: list[dict[str, Any]]) -> dict[str, Any]:
    """The removed documents, and per eval set (benchmark or eval file) the documents and instances matched."""
    by_set: dict[str, dict[str, set[str]]] = {}
    for m in matches:
        entry = by_set.setdefault(str(m["eval_file"]), {"documents": set(), "instances": set()})
        entry["documents"].add(str(m["id"]))
        entry["instances"].add(str(m["eval_id"]))
    return {"documents_removed": len(matches), "matches": sorted(matches, key=lambda m: str(m["id"])),
            "by_eval_set": {name: {"documents": sorted(e["documents"]), "instances": sorted(e["instances"])}
                            for name, e in sorted(by_set.items())}}


def build_manifest(run_dir: Path, stages: list[str], sources: list[dict], config: dict[str, Any], tasks: int) -> dict:
    """manifest.json and reports/ from the per-task counts; `config_sha256` hashes `config` with each
    source's path replaced by the content name of its files, so it names no directory."""
    counts_dir = run_dir / "work" / "counts"
    stage_entries, throughput = _stage_entries(counts_dir, stages, tasks)
    source_entries, inputs = _source_entries(counts_dir, sources)
    config = copy.deepcopy(config)
    for entry in config["sources"]:
        entry["path"] = content_name(inputs.get(entry["name"], []))
    reports = run_dir / "reports"
    write_json(reports / "decontamination.json", decontamination_report(_decontamination_matches(run_dir)))
    write_json(reports / "throughput.json", {"stages": throughput})
    read_stage = next((s for s in stage_entries if s["name"] == "read"), None)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "config_sha256": canonical_sha256(config),
        "sources": source_entries,
        "stages": stage_entries,
        "quarantine": read_stage["dropped"] if read_stage else {},
        "outputs": _outputs(run_dir),
        "excluded": _excluded_files(run_dir, stages),
        "reports": {"decontamination": "reports/decontamination.json", "throughput": "reports/throughput.json"},
        "inputs": recorded_inputs(run_dir),
    }
    write_json(run_dir / "manifest.json", manifest)
    return manifest


def _stage_entries(counts_dir: Path, stages: list[str], tasks: int) -> tuple[list[dict[str, Any]],
                                                                              list[dict[str, Any]]]:
    """Per stage, its counts summed over tasks (each stage takes in what the previous one kept) and its
    throughput entry."""
    stage_entries: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    for stage in stages:
        files = [counts_dir / stage / f"{rank:05d}.json" for rank in range(tasks)]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise RuntimeError(f"stage {stage}: counts missing for {len(missing)} task(s), e.g. {missing[0]}")
        total = _sum_counts(files)
        if total["documents_in"] != total["documents_kept"] + sum(total["dropped"].values()):
            raise RuntimeError(f"stage {stage}: documents in != kept + dropped: {total}")
        if stage_entries and stage_entries[-1]["documents_kept"] != total["documents_in"]:
            raise RuntimeError(f"stage {stage}: takes {total['documents_in']} documents, "
                               f"previous stage kept {stage_entries[-1]['documents_kept']}")
        stage_entries.append({
            "name": stage, "documents_in": total["documents_in"], "documents_kept": total["documents_kept"],
            "dropped": dict(sorted(total["dropped"].items())), "bytes_in": total["bytes_in"],
            "bytes_out": total["bytes_out"], "documents_modified": total["documents_modified"],
        })
        seconds = total["seconds"]
        throughput.append({"name": stage, "documents_in": total["documents_in"], "cpu_seconds": round(seconds, 3),
                           "docs_per_cpu_second": round(total["documents_in"] / seconds, 1) if seconds else None})
    return stage_entries, throughput


def _source_entries(counts_dir: Path, sources: list[dict]) -> tuple[dict[str, dict[str, Any]],
                                                                     dict[str, list[dict]]]:
    """Per source: license, version, date, documents and bytes curated, records read and quarantined, paths
    skipped, and the content name of its inputs; and the input file records per source."""
    read_in: dict[str, Counter] = {}
    inputs: dict[str, list[dict]] = {}
    skipped: dict[str, Counter] = {}  # source -> reason -> paths found but not read (quarantine/skipped/)
    for f in sorted((counts_dir / "read").glob("*.json")):
        counted = json.loads(f.read_text(encoding="utf-8"))
        for name, tally in counted.get("sources", {}).items():
            read_in.setdefault(name, Counter()).update(tally)
        for name, records in counted.get("inputs", {}).items():
            inputs.setdefault(name, []).extend(records)
        for name, reasons in counted.get("skipped", {}).items():
            skipped.setdefault(name, Counter()).update(reasons)
    out: dict[str, Counter] = {}
    for f in sorted((counts_dir / OUTPUT_COUNTS).glob("*.json")):
        for name, tally in json.loads(f.read_text(encoding="utf-8"))["sources"].items():
            out.setdefault(name, Counter()).update(tally)
    entries = {
        s["name"]: {"license": s["license"], "version": s["version"], "released": s.get("released"),
                    "documents": out.get(s["name"], Counter()).get("documents", 0),
                    "bytes": out.get(s["name"], Counter()).get("bytes", 0),
                    "records_in": read_in.get(s["name"], Counter()).get("records", 0),
                    "quarantined": read_in.get(s["name"], Counter()).get("quarantined", 0),
                    "skipped": dict(sorted(skipped.get(s["name"], {}).items())),
                    "input": content_name(inputs.get(s["name"], []))}
        for s in sources
    }
    return entries, inputs


def _outputs(run_dir: Path) -> list[dict[str, Any]]:
    outputs = []
    for path in sorted((run_dir / "curated").glob("*.parquet")):
        record = file_record(path, run_dir)
        record["documents"] = pq.ParquetFile(path).metadata.num_rows
        outputs.append(record)
    return outputs


def _excluded_files(run_dir: Path, stages: list[str]) -> dict[str, list[str]]:
    excluded = {}
    for stage in stages:
        files = sorted((run_dir / "excluded" / stage).glob("*.jsonl"))
        if files:
            excluded[stage] = [f.relative_to(run_dir).as_posix() for f in files]
    return excluded


def _decontamination_matches(run_dir: Path) -> list[dict[str, Any]]:
    matches = []
    for f in sorted((run_dir / "excluded" / "decontaminate").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            meta = row["metadata"]
            matches.append({"id": row["id"], "source": meta.get("source"), "url": meta.get("url"),
                            "eval_file": row.get("eval_file"), "eval_id": row.get("eval_id"),
                            "ngram": row.get("ngram")})
    return matches
