"""`atom synth`: synthetic reasoning traces (and WRAP rephrasings) as a curated run.

    generate problems -> [template: reference traces | model: sample -> verify -> select]
    [rephrase curated documents] -> dedup (exact text) -> curated/*.parquet

Output, in run.dir (the curated contract, so `atom tokenize` reads it like any curated run):
- `curated/part-NNNNN.parquet`: id (sha256 of the text), text, source, license, url, source_version,
  language. A trace's text is ChatML: `<|im_start|>user\\n{problem + format instruction}<|im_end|>\\n
  <|im_start|>assistant\\n<think>\\n{steps}\\n</think>\\nAnswer: X<|im_end|>\\n`; a rephrasing's is plain text.
- `synthetic_records.parquet`: one row per sample (see `records.py`), kept or not.
- `quarantine/malformed.jsonl`: model outputs with no parsable answer (or no text), with the reason.
- `manifest.json` (schema atom.curation/1): sources, stage counts, quarantine, outputs, config_sha256.

License of template traces: the problems and traces are produced mechanically from this repository's
templates, so they carry the repository's license (Apache-2.0, `problems.license`). Model-written traces
carry the same by default; set `problems.license` when the model's terms say otherwise. Rephrasings are
derivatives of their source documents and keep each source's license.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from core.config import ConfigError, ConfigModel, StageConfig
from core.manifest import code_version, file_record, recorded_config, recorded_config_sha256
from core.rundir import RunDir, recorded_inputs, write_atomic, write_json
from core.stage import Stage
from data_pipeline.languages import check_language_codes
from data_pipeline.synthetic import rephrase as wrap
from data_pipeline.synthetic.backends import EndpointBackend, LocalBackend, Sampling
from data_pipeline.synthetic.problems import GENERATORS, LEVELS, generate_problems, unknown_generators
from data_pipeline.synthetic.records import (
    DROP_DUPLICATE,
    DROP_EXTRA,
    DROP_LENGTH,
    DROP_MALFORMED,
    DROP_WRONG,
    Record,
    records_table,
)
from data_pipeline.synthetic.sampling import reference_records, rejection_sample
from data_pipeline.tokens.curated import CURATED_DIR, CURATION_SCHEMA, open_curated
from evaluation.verify import MIN_ROUNDED_DECIMALS

RECORDS_FILE = "synthetic_records.parquet"
QUARANTINE_DIR = "quarantine"
MANIFEST = "manifest.json"
OUTPUTS = (CURATED_DIR, QUARANTINE_DIR, RECORDS_FILE, MANIFEST)
CURATED_SCHEMA = pa.schema([(name, pa.string()) for name in
                            ("id", "text", "source", "license", "url", "source_version", "language")])


class ProblemsConfig(ConfigModel):
    count: int = Field(2000, ge=0)
    generators: list[str] = Field(default_factory=lambda: list(GENERATORS))
    difficulties: list[Annotated[int, Field(ge=min(LEVELS), le=max(LEVELS))]] = Field(
        default_factory=lambda: list(LEVELS))
    source: str = "synthetic-math"  # the curated `source` of every trace
    license: str = "Apache-2.0"  # see the module docstring
    language: str = "en"  # the curated `language` of every trace: a language model label

    @field_validator("language")
    @classmethod
    def _code(cls, code: str) -> str:
        return check_language_codes([code])[0]

    @field_validator("generators")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("at least one generator is needed")
        unknown = unknown_generators(names)
        if unknown:
            raise ValueError(f"unknown generator(s) {', '.join(map(repr, unknown))} (known: {', '.join(GENERATORS)})")
        return names

    @field_validator("difficulties")
    @classmethod
    def _levels(cls, levels: list[int]) -> list[int]:
        if not levels or any(level not in LEVELS for level in levels):
            raise ValueError(f"difficulties must be a non-empty list of {list(LEVELS)}, got {levels}")
        return levels


class BackendConfig(ConfigModel):
    """Who writes the traces: the generator's templates, a local model directory, or an endpoint."""

    kind: Literal["template", "local", "endpoint"] = "template"
    model_dir: str | None = None  # local: a saved Hugging Face model directory
    device: str = Field("cpu", pattern=r"^(cpu|mps|cuda(:[0-9]+)?)$")  # a torch device
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    base_url: str | None = None  # endpoint: e.g. http://node:8000/v1
    model: str | None = None  # endpoint: the served model name
    api_key_env: str | None = None  # endpoint: environment variable holding the API key (never recorded)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(1.0, ge=0)
    concurrency: int = Field(4, ge=1)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # extra request fields (e.g. vLLM's)

    @model_validator(mode="after")
    def _needs(self) -> BackendConfig:
        if self.kind == "local" and not self.model_dir:
            raise ValueError("backend.kind 'local' needs backend.model_dir")
        if self.kind == "endpoint" and not (self.base_url and self.model):
            raise ValueError("backend.kind 'endpoint' needs backend.base_url and backend.model")
        return self


class SamplingConfig(ConfigModel):
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0)  # 0: greedy
    top_p: float = Field(0.95, gt=0, le=1)


class RejectionConfig(ConfigModel):
    samples_per_problem: int = Field(4, ge=1)
    keep_per_problem: int = Field(1, ge=1)
    require_think: bool = True  # a trace without `</think>` is malformed

    @model_validator(mode="after")
    def _check(self) -> RejectionConfig:
        if self.keep_per_problem > self.samples_per_problem:
            raise ValueError(f"rejection.keep_per_problem={self.keep_per_problem} exceeds rejection."
                             f"samples_per_problem={self.samples_per_problem}: cannot keep more traces than sampled")
        return self


RephraseStyle = Literal["wikipedia", "qa"]
REPHRASE_STYLES: tuple[RephraseStyle, ...] = ("wikipedia", "qa")


class RephraseConfig(ConfigModel):
    input: str  # a curated run directory
    styles: list[RephraseStyle] = Field(default_factory=lambda: list(REPHRASE_STYLES))
    sources: list[str] | None = None  # only documents of these curated sources (None: all)
    max_documents: int | None = Field(None, ge=1)
    max_passage_chars: int = Field(2000, ge=100)
    min_length_ratio: float = Field(0.2, ge=0)
    max_length_ratio: float = Field(5.0, gt=0)
    source: str = "synthetic-rephrase"

    @model_validator(mode="after")
    def _check(self) -> RephraseConfig:
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError(f"rephrase.min_length_ratio={self.min_length_ratio} must be below rephrase."
                             f"max_length_ratio={self.max_length_ratio}: no rephrasing could be kept")
        return self


class SynthConfig(StageConfig):
    problems: ProblemsConfig | None = Field(default_factory=ProblemsConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    rejection: RejectionConfig = Field(default_factory=RejectionConfig)
    rephrase: RephraseConfig | None = None
    docs_per_shard: int = Field(50_000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.rephrase is not None and self.backend.kind == "template":
            raise ValueError("rephrase needs a model: set backend.kind to 'local' or 'endpoint'")
        if self.problems is None and self.rephrase is None:
            raise ValueError("nothing to generate: set problems and/or rephrase")
        return self


def plan(config: SynthConfig) -> list[str]:
    steps = []
    b = config.backend
    who = {"template": "the generators' reference traces",
           "local": f"model {b.model_dir} (in-process, {b.device})",
           "endpoint": f"endpoint {b.base_url} model {b.model}"}[b.kind]
    if config.problems:
        p = config.problems
        steps.append(f"generate {p.count} problems ({', '.join(p.generators)}; difficulties {p.difficulties}) "
                     f"seed {config.run.seed}")
        if b.kind == "template":
            steps.append(f"write {who}, each checked by the verifier")
        else:
            r = config.rejection
            steps.append(f"sample {r.samples_per_problem} trace(s) per problem from {who}; verify; "
                         f"keep <= {r.keep_per_problem} correct per problem")
    if config.rephrase:
        rephrase = config.rephrase
        steps.append(f"rephrase documents of {rephrase.input} ({', '.join(rephrase.styles)}) with {who}")
    steps.append("drop exact duplicate texts")
    steps.append(f"write {config.run.dir}/{CURATED_DIR}/*.parquet, {RECORDS_FILE}, {QUARANTINE_DIR}/, {MANIFEST}")
    return steps


def document_id(text: str) -> str:
    return "synth/" + hashlib.sha256(text.encode()).hexdigest()[:32]


def build_backend(config: BackendConfig, log=None):
    """The configured backend, checked before anything is written (an endpoint must answer /models)."""
    if config.kind == "local":
        assert config.model_dir is not None  # BackendConfig requires it for kind local
        return LocalBackend(config.model_dir, config.device, config.dtype)
    if config.kind == "endpoint":
        assert config.base_url is not None and config.model is not None  # required for kind endpoint
        backend = EndpointBackend(config.base_url, config.model, config.api_key_env, config.timeout_s,
                                  config.retries, config.backoff_s, config.concurrency, config.extra_body)
        served = backend.check()
        if served and config.model not in served and log:
            log.warning("endpoint %s does not list model %r (it serves %s)", config.base_url, config.model, served[:5])
        return backend
    return None


def _source_docs(config: RephraseConfig) -> list[wrap.SourceDoc]:
    curated = open_curated(config.input)
    docs = []
    columns = ("id", "text", "license", "url", "language", "source")
    for _, batch in curated.batches(1024, columns):
        for row in batch.to_pylist():
            if config.sources is not None and row["source"] not in config.sources:
                continue
            if not (row["text"] or "").strip():
                continue
            docs.append(wrap.SourceDoc(row["id"], row["text"], row["license"], row["url"] or "", row["language"] or ""))
            if config.max_documents and len(docs) >= config.max_documents:
                return docs
    if not docs:
        raise ConfigError(f"{config.input}: no documents to rephrase (rephrase.sources {config.sources})")
    return docs


def _nbytes(texts) -> int:
    return sum(len(t.encode()) for t in texts if t)


def _stage(name: str, records: list[Record], kept: list[Record], bytes_in: int, bytes_out: int) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    kept_ids = {id(r) for r in kept}
    for r in records:
        if id(r) not in kept_ids:
            dropped[r.drop_reason or "unknown"] = dropped.get(r.drop_reason or "unknown", 0) + 1
    return {"name": name, "documents_in": len(records), "documents_kept": len(kept),
            "dropped": dict(sorted(dropped.items())), "bytes_in": bytes_in, "bytes_out": bytes_out}


def _trace_stages(problems, records: list[Record], template: bool, count: int) -> list[dict[str, Any]]:
    # bytes: prompts into `sample`, responses through `verify`/`select`, documents through `dedup`
    stages = [{"name": "generate", "documents_in": count, "documents_kept": len(problems), "dropped": {},
               "bytes_in": 0, "bytes_out": _nbytes(p.prompt() for p in problems)}]
    if template:
        traces = _nbytes(r.response for r in records)
        stages.append(_stage("verify", records, records, traces, traces))
        return stages
    formed = [r for r in records if r.drop_reason != DROP_MALFORMED]
    correct = [r for r in formed if r.drop_reason != DROP_WRONG]
    selected = [r for r in correct if r.drop_reason != DROP_EXTRA]
    stages.append(_stage("sample", records, formed, _nbytes(r.prompt for r in records),
                         _nbytes(r.response for r in formed)))
    stages.append(_stage("verify", formed, correct, _nbytes(r.response for r in formed),
                         _nbytes(r.response for r in correct)))
    stages.append(_stage("select", correct, selected, _nbytes(r.response for r in correct),
                         _nbytes(r.response for r in selected)))
    return stages


def _clear(root: Path) -> None:
    for name in OUTPUTS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def stage_inputs(config: SynthConfig) -> dict[str, str]:
    """What synthesis reads: the rephrased curated run and a local model, when configured."""
    inputs = {"rephrase.input": config.rephrase.input} if config.rephrase else {}
    if config.backend.model_dir:
        inputs["backend.model_dir"] = config.backend.model_dir
    return inputs


def run(config: SynthConfig) -> Path:
    # Everything that can be wrong with the input (rephrase source, backend) is found before writing.
    source_docs = _source_docs(config.rephrase) if config.rephrase else []
    import logging

    backend = build_backend(config.backend, logging.getLogger("atom.synth"))
    sampling = Sampling(config.sampling.max_new_tokens, config.sampling.temperature, config.sampling.top_p)
    rundir = RunDir.claim(config.run.dir, "synth", config, overwrite=config.run.overwrite,
                          inputs=stage_inputs(config))
    log = rundir.logger()
    root = rundir.path
    _clear(root)
    try:
        records, stages, url_of = _generate(config, backend, sampling, source_docs, log)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    kept = _dedup(records, stages)
    outputs = _write_curated(root, kept, url_of, config.docs_per_shard)
    pq.write_table(records_table(records), root / RECORDS_FILE, compression="zstd")
    malformed = _quarantine_malformed(root, records)

    manifest = _manifest(config, root, records, kept, stages, outputs, backend)
    write_json(root / MANIFEST, manifest)
    if not kept:
        log.warning("synth: no document passed; %s holds the records but no curated shard (nothing to tokenize)",
                    root)
    attempted = len(records)
    accepted = sum(r.accepted for r in records)
    log.info("synth: %d samples, %d accepted, %d rejected (%d malformed), %d documents kept -> %s",
             attempted, accepted, attempted - accepted, len(malformed), len(kept), root)
    print_summary(root, manifest)
    return root


def _generate(config: SynthConfig, backend: Any, sampling: Sampling, source_docs: list, log: Any
              ) -> tuple[list[Record], list[dict[str, Any]], dict[int, str]]:
    """Every record (reasoning traces, then rephrasings), the stage counts so far, and each rephrasing's URL."""
    seed = config.run.seed
    records: list[Record] = []
    stages: list[dict[str, Any]] = []
    url_of: dict[int, str] = {}
    if config.problems is not None:
        p = config.problems
        problems = generate_problems(p.count, seed, p.generators, p.difficulties)
        if backend is None:
            traces = reference_records(problems)
        else:
            r = config.rejection
            traces = rejection_sample(problems, backend, sampling, seed, r.samples_per_problem,
                                      r.keep_per_problem, r.require_think, log)
        for rec in traces:
            rec.source, rec.license, rec.language = p.source, p.license, p.language
        stages += _trace_stages(problems, traces, backend is None, p.count)
        records += traces
    if config.rephrase is not None:
        rc = config.rephrase
        rephrased = wrap.rephrase_documents(source_docs, rc.styles, backend, sampling, seed, rc.max_passage_chars,
                                            rc.min_length_ratio, rc.max_length_ratio, rc.source)
        kept = [x for x in rephrased if x.accepted]
        stages.append(_stage("rephrase", rephrased, kept,
                             _nbytes(wrap.passage(d.text, rc.max_passage_chars) for d in source_docs)
                             * len(rc.styles), _nbytes(x.text for x in kept)))
        for rec in rephrased:
            url_of[id(rec)] = wrap.url_for(rec.template.split("/", 1)[1], str(rec.source_doc_id))
        records += rephrased
    return records, stages, url_of


def _dedup(records: list[Record], stages: list[dict[str, Any]]) -> list[Record]:
    """Exact dedup over everything that survived, in generation order; appends the dedup stage's counts."""
    candidates = [r for r in records if r.text is not None and r.drop_reason is None]
    seen: set[str] = set()
    for rec in candidates:
        assert rec.text is not None
        doc = document_id(rec.text)
        if doc in seen:
            rec.drop_reason = DROP_DUPLICATE
        else:
            seen.add(doc)
            rec.kept, rec.doc_id = True, doc
    kept = [r for r in candidates if r.kept]
    stages.append(_stage("dedup", candidates, kept, _nbytes(r.text for r in candidates), _nbytes(r.text for r in kept)))
    return kept


def _quarantine_malformed(root: Path, records: list[Record]) -> list[Record]:
    """Responses without a readable answer, kept whole in quarantine/malformed.jsonl."""
    malformed = [r for r in records if r.drop_reason == DROP_MALFORMED]
    if malformed:
        lines = [json.dumps({"record_id": r.record_id, "template": r.template, "source_doc_id": r.source_doc_id,
                             "reason": r.reason, "response": r.response}, ensure_ascii=False, sort_keys=True)
                 for r in malformed]
        write_atomic(root / QUARANTINE_DIR / "malformed.jsonl", "\n".join(lines) + "\n")
    return malformed


def print_summary(root: Path, manifest: dict[str, Any]) -> None:
    """What the stage wrote, on the console: a successful run would otherwise be silent."""
    print(f"atom synth: {root} (backend {manifest['backend']['kind']})")
    for kind, k in manifest["records"]["by_kind"].items():
        print(f"  {kind}: {k['attempted']:,} attempted, {k['accepted']:,} accepted, {k['rejected']:,} rejected, "
              f"{k['kept']:,} kept")
    quarantined = manifest["quarantine"][DROP_MALFORMED]
    print(f"  quarantined: {quarantined}" + (f" malformed -> {root / QUARANTINE_DIR}" if quarantined else ""))
    docs = sum(o["documents"] for o in manifest["outputs"])
    print(f"  curated: {docs:,} documents in {len(manifest['outputs'])} files under {root / CURATED_DIR}")
    print(f"  records: {manifest['records']['rows']:,} rows in {root / RECORDS_FILE}")


def _url(rec: Record, url_of: dict[int, str]) -> str:
    return url_of.get(id(rec)) or f"synthetic://atom/{rec.template}"


def _write_curated(root: Path, kept: list[Record], url_of: dict[int, str], per_shard: int) -> list[dict[str, Any]]:
    (root / CURATED_DIR).mkdir(parents=True)
    outputs = []
    for n, start in enumerate(range(0, max(len(kept), 1), per_shard)):
        chunk = kept[start:start + per_shard]
        if not chunk:
            break
        columns = {
            "id": [r.doc_id for r in chunk],
            "text": [r.text for r in chunk],
            "source": [r.source for r in chunk],
            "license": [r.license for r in chunk],
            "url": [_url(r, url_of) for r in chunk],
            "source_version": [f"{r.generator}@{r.generator_version}" for r in chunk],
            "language": [r.language for r in chunk],
        }
        path = root / CURATED_DIR / f"part-{n:05d}.parquet"
        pq.write_table(pa.table(columns, schema=CURATED_SCHEMA), path, compression="zstd")
        outputs.append({**file_record(path, root), "documents": len(chunk)})
    return outputs


def _manifest(config: SynthConfig, root: Path, records: list[Record], kept: list[Record],
              stages: list[dict[str, Any]], outputs: list[dict[str, Any]], backend) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for r in kept:
        assert r.source is not None and r.text is not None  # kept records are documents with provenance
        s = sources.setdefault(r.source, {"documents": 0, "bytes": 0, "licenses": {}, "generators": {}})
        s["documents"] += 1
        s["bytes"] += len(r.text.encode())
        s["licenses"][r.license] = s["licenses"].get(r.license, 0) + 1
        gen = f"{r.generator}@{r.generator_version}"
        s["generators"][gen] = s["generators"].get(gen, 0) + 1
    for s in sources.values():
        s["licenses"] = dict(sorted(s["licenses"].items()))
        s["generators"] = dict(sorted(s["generators"].items()))
    by_kind: dict[str, dict[str, int]] = {}
    for r in records:
        k = by_kind.setdefault(r.kind, {"attempted": 0, "accepted": 0, "rejected": 0, "kept": 0})
        k["attempted"] += 1
        k["accepted" if r.accepted else "rejected"] += 1
        k["kept"] += r.kept
    quarantined = sum(r.drop_reason == DROP_MALFORMED for r in records)
    described = backend.describe() if backend is not None else {"kind": "template"}
    return {
        "schema": CURATION_SCHEMA,
        "kind": "synthetic",
        "code_version": code_version(),
        "config": recorded_config(config),
        "config_sha256": recorded_config_sha256(config),
        "inputs": recorded_inputs(root),
        "sources": dict(sorted(sources.items())),
        "stages": stages,
        "quarantine": {DROP_MALFORMED: quarantined},
        "outputs": outputs,
        "records": {**file_record(root / RECORDS_FILE, root), "rows": len(records),
                    "by_kind": dict(sorted(by_kind.items()))},
        "generators": {**{g.name: g.version for g in GENERATORS.values()}, wrap.GENERATOR: wrap.VERSION},
        "backend": described,
        "verifier": {"min_rounded_decimals": MIN_ROUNDED_DECIMALS,
                     "require_think": config.rejection.require_think if backend is not None else True},
        "drop_reasons": [DROP_MALFORMED, DROP_WRONG, DROP_EXTRA, DROP_LENGTH, DROP_DUPLICATE],
    }


STAGE = Stage(
    name="synth",
    summary="generate verified synthetic reasoning traces (and WRAP rephrasings) as a curated run",
    config_cls=SynthConfig,
    plan=plan,
    run=run,
    inputs=stage_inputs,
)
