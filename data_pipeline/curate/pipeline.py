"""The curation run as a chain of datatrove phases, each a list of PipelineSteps on an executor.

    filter          (tasks)    read -> extract -> pii -> language -> url_filter -> gopher_repetition
                               -> gopher_quality -> c4 -> fineweb_quality -> [exact signatures]
    exact_find      (1)        datatrove ExactFindDedups
    exact_filter    (tasks)    exact_dedup -> [MinHash signatures]
    minhash_buckets (buckets)  datatrove MinhashDedupBuckets
    minhash_cluster (1)        datatrove MinhashDedupCluster
    curate          (tasks)    minhash_dedup -> decontaminate -> curated/<rank>.parquet
    manifest        (1)        manifest.json, reports/

PII masking comes first after extraction, before anything writes a document's text (see PIIConfig).

Disabled dedup stages remove their phases. Every phase keeps datatrove's completion markers under
work/logs/<phase>/, so a rerun of a killed run skips finished tasks; tasks are deterministic and write
their outputs whole (temporary file + rename), so the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.word_tokenizers import WordTokenizer

from core.manifest import content_name, file_record, recorded_config
from core.rundir import RunDir
from data_pipeline.curate.config import CurateConfig, check_inputs
from data_pipeline.curate.executors import LocalExecutor, SlurmExecutor, route_datatrove_logs, wait_for_completions
from data_pipeline.curate.steps.accounting import AccountedStep, exclusion_record
from data_pipeline.curate.steps.decontam import NAMED_EVALS, Decontaminate, eval_files
from data_pipeline.curate.steps.read import RankFileReader, RankFileWriter, SourceReader, list_source_files
from data_pipeline.curate.steps.transform import (
    DatatroveFilterStage,
    Extract,
    LanguageId,
    MaskPII,
    UrlFilterStage,
    check_filter_params,
    pii_settings,
)
from data_pipeline.curate.steps.write import CuratedWriter, WriteManifest

STAGE_NAME = "data"
QUALITY_STAGES = ("gopher_repetition", "gopher_quality", "c4", "fineweb_quality")
RUN_OUTPUTS = ("work", "curated", "excluded", "quarantine", "reports", "manifest.json")


@dataclass
class Phase:
    name: str
    steps: list[PipelineStep]
    tasks: int
    stages: list[str] = field(default_factory=list)  # accounting stages it runs, for the plan


def document_text(doc: Document) -> str:
    return doc.text


class SplitWords(WordTokenizer):
    """MinHash shingles are taken from simplified text (lower case, no punctuation, single spaces):
    splitting on spaces gives the same words as spaCy there, without loading spaCy in every worker."""

    def __init__(self):
        super().__init__("xx")

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError


class ReasonJsonlWriter(JsonlWriter):
    """Exclusion output for datatrove's dedup filters, which drop without a reason: we know it."""

    def __init__(self, folder: str, stage: str, reason: str):
        super().__init__(folder, output_filename="${rank}.jsonl", compression=None)
        self.stage = stage
        self.reason = reason

    def _default_adapter(self, document: Document) -> dict:
        return exclusion_record(document, self.stage, self.reason)


def recorded_curation_config(config: CurateConfig) -> dict[str, Any]:
    """`recorded_config` with every eval set that exists named by its content (the manifest phase names the
    sources by theirs, from the read tasks' file records): config_sha256 names no directory."""
    data = recorded_config(config)
    decontamination = data["stages"]["decontamination"]
    named = []
    for entry in decontamination["evals"]:
        path = Path(entry)
        if entry not in NAMED_EVALS and path.exists():
            root = path if path.is_dir() else path.parent
            entry = content_name([file_record(f, root) for f in eval_files([entry])])
        named.append(entry)
    decontamination["evals"] = named
    return data


def build_phases(config: CurateConfig) -> list[Phase]:
    """The phases of this config, with absolute paths (jobs may run in another directory)."""
    check_inputs(config)
    stages = config.stages
    run = Path(config.run.dir).resolve()
    sources = [s.to_dict() | {"path": str(Path(s.path).resolve())} for s in config.sources]
    steps, names = _filter_steps(config, run, sources)
    phases: list[Phase] = []
    if stages.exact_dedup.enabled:
        steps, names = _exact_dedup(config, run, steps, names, phases)
    if stages.minhash.enabled:
        steps, names = _minhash_dedup(config, run, steps, names, phases)
    if stages.decontamination.enabled:
        d = stages.decontamination
        steps.append(Decontaminate(_counts(run), _excluded(run, "decontaminate"), d.evals, d.fields, d.n))
        names.append("decontaminate")
    steps.append(CuratedWriter(str(run / "curated"), _counts(run), config.output.compression,
                               config.output.row_group_size))
    phases.append(Phase("curate", steps, config.executor.tasks, names))
    all_stages = [name for phase in phases for name in phase.stages]
    manifest = WriteManifest(str(run), all_stages, sources, recorded_curation_config(config), config.executor.tasks)
    phases.append(Phase("manifest", [manifest], 1))
    return phases


def _counts(run: Path) -> str:
    return str(run / "work" / "counts")


def _excluded(run: Path, stage: str) -> str:
    return str(run / "excluded" / stage)


def _filter_steps(config: CurateConfig, run: Path, sources: list[dict[str, Any]]
                  ) -> tuple[list[PipelineStep], list[str]]:
    """Read, then the per-document stages (extraction, PII masking, language, URL and quality filters)."""
    stages, counts = config.stages, _counts(run)
    pii = pii_settings(stages.pii) if stages.pii.enabled else None
    reader = SourceReader(sources, config.input.max_document_bytes, counts, str(run / "quarantine"), pii)
    steps: list[PipelineStep] = [reader]
    names = ["read"]
    if stages.extraction.enabled:
        e = stages.extraction
        steps.append(Extract(counts, _excluded(run, "extract"), e.extractor, e.main_content, e.favour_precision,
                             e.skip_elements))
        names.append("extract")
    if pii is not None:
        steps.append(MaskPII(counts, pii))
        names.append("pii")
    if stages.language.enabled:
        steps.append(LanguageId(counts, _excluded(run, "language"), stages.language.languages,
                                stages.language.threshold))
        names.append("language")
    if stages.url_filter.enabled:
        u = stages.url_filter
        params = {"soft_word_threshold": u.soft_word_threshold, "extra_domains": u.extra_domains or None,
                  "extra_urls": u.extra_urls or None, "banned_words": u.banned_words or None,
                  "use_integrated_lists": u.use_integrated_lists}
        steps.append(UrlFilterStage(counts, _excluded(run, "url_filter"), params))
        names.append("url_filter")
    for stage in QUALITY_STAGES:
        section = getattr(stages, stage)
        if section.enabled:
            check_filter_params(stage, section.params, f"stages.{stage}.params")
            for lang, params in section.per_language.items():
                check_filter_params(stage, params, f"stages.{stage}.per_language.{lang}")
            steps.append(DatatroveFilterStage(stage, counts, _excluded(run, stage), section.params,
                                              section.per_language))
            names.append(stage)
    return steps, names


def _exact_dedup(config: CurateConfig, run: Path, steps: list[PipelineStep], names: list[str],
                 phases: list[Phase]) -> tuple[list[PipelineStep], list[str]]:
    """Close the running phase with exact-dedup signatures, add the phase that finds duplicates, and
    return the steps that open the next phase (drop the duplicates)."""
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.utils.hashing import HashConfig

    work = run / "work"
    exact_config = ExactDedupConfig(content_getter=document_text, hash_config=HashConfig(precision=64))
    folder = str(work / "after_filters")
    steps = steps + [RankFileWriter(folder), ExactDedupSignature(str(work / "exact" / "sigs"), exact_config)]
    phases.append(Phase("filter", steps, config.executor.tasks, names))
    phases.append(Phase("exact_find", [ExactFindDedups(str(work / "exact" / "sigs"), str(work / "exact" / "dups"),
                                                       exact_config)], 1))
    inner = ExactDedupFilter(str(work / "exact" / "dups"), exact_config,
                             ReasonJsonlWriter(_excluded(run, "exact_dedup"), "exact_dedup", "exact_duplicate"))
    return [RankFileReader(folder), AccountedStep(inner, "exact_dedup", "exact_duplicate", _counts(run))], \
        ["exact_dedup"]


def _minhash_dedup(config: CurateConfig, run: Path, steps: list[PipelineStep], names: list[str],
                   phases: list[Phase]) -> tuple[list[PipelineStep], list[str]]:
    """Close the running phase with MinHash signatures, add the bucket and cluster phases, and return the
    steps that open the next phase (drop the near-duplicates)."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.utils.hashing import HashConfig

    m = config.stages.minhash
    work = run / "work"
    mh_config = MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                              seed=m.seed, hash_config=HashConfig(precision=64))
    folder = str(work / "before_minhash")
    mh = work / "minhash"
    steps = steps + [RankFileWriter(folder), MinhashDedupSignature(str(mh / "sigs"), mh_config,
                                                                   language=SplitWords())]
    phases.append(Phase("exact_filter" if config.stages.exact_dedup.enabled else "filter", steps,
                        config.executor.tasks, names))
    buckets = MinhashDedupBuckets(str(mh / "sigs"), str(mh / "buckets"), config=mh_config)
    phases.append(Phase("minhash_buckets", [buckets], m.num_buckets))
    phases.append(Phase("minhash_cluster", [MinhashDedupCluster(str(mh / "buckets"), str(mh / "remove"),
                                                                config=mh_config)], 1))
    inner = MinhashDedupFilter(str(mh / "remove"),
                               exclusion_writer=ReasonJsonlWriter(_excluded(run, "minhash_dedup"), "minhash_dedup",
                                                                  "near_duplicate"))
    return [RankFileReader(folder), AccountedStep(inner, "minhash_dedup", "near_duplicate", _counts(run))], \
        ["minhash_dedup"]


# ---------------------------------------------------------------------------------------------
# plan (dry run) and run
# ---------------------------------------------------------------------------------------------


def plan(config: CurateConfig) -> list[str]:
    phases = build_phases(config)
    lines = []
    for source in config.sources:
        n = len(list_source_files(source.to_dict()))
        lines.append(f"read source {source.name} ({source.kind}, {n} files, {source.license}, {source.version})")
    ex = config.executor
    where = "locally" if ex.kind == "local" else f"on SLURM partition {ex.slurm.partition}"
    lines.append(f"run {len(phases)} datatrove phases {where} ({ex.tasks} tasks, {ex.workers} workers):")
    for phase in phases:
        stages = f": {' -> '.join(phase.stages)}" if phase.stages else ""
        lines.append(f"  {phase.name} x{phase.tasks}{stages}")
    run = Path(config.run.dir)
    lines.append(f"write {run / 'curated'}/*.parquet, {run / 'manifest.json'}, excluded/, quarantine/, reports/")
    return lines


def _executor(config: CurateConfig, phase: Phase, run: Path, depends=None):
    logging_dir = str(run / "work" / "logs" / phase.name)
    ex = config.executor
    if ex.kind == "local":
        workers = min(ex.workers, phase.tasks)
        return LocalExecutor(phase.steps, tasks=phase.tasks, workers=workers, logging_dir=logging_dir,
                                     skip_completed=True)
    s = ex.slurm
    env_command = s.env_command or f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    return SlurmExecutor(
        phase.steps, tasks=phase.tasks, workers=ex.workers if phase.tasks > 1 else -1, time=s.time,
        partition=s.partition, cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos,
        job_name=f"{s.job_name}-{phase.name}", env_command=env_command, sbatch_args=dict(s.sbatch_args),
        logging_dir=logging_dir, slurm_logs_folder=str(run / "work" / "slurm_logs" / phase.name),
        depends=depends, skip_completed=True, mail_type="NONE",
    )


def prepare_run_dir(config: CurateConfig) -> RunDir:
    run = Path(config.run.dir)
    if config.run.overwrite and run.exists():
        for name in RUN_OUTPUTS:
            target = run / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    return RunDir.claim(run, STAGE_NAME, config, config.run.overwrite, inputs=stage_inputs(config))


def stage_inputs(config: CurateConfig) -> dict[str, str]:
    """Every raw source and eval set curation reads, by the config key that names it."""
    inputs = {f"sources.{s.name}": s.path for s in config.sources}
    if config.stages.decontamination.enabled:
        inputs |= {f"stages.decontamination.evals.{i}": path
                   for i, path in enumerate(config.stages.decontamination.evals) if path not in NAMED_EVALS}
    return inputs


def run(config: CurateConfig) -> dict[str, Any] | None:
    phases = build_phases(config)  # every ConfigError before any work
    rundir = prepare_run_dir(config)
    run_path = rundir.path.resolve()
    log = rundir.logger()
    log.info(f"curation run in {run_path}: {len(phases)} phases, executor {config.executor.kind}")
    route_datatrove_logs()
    if config.executor.kind == "local":
        for phase in phases:
            started = time.monotonic()
            _executor(config, phase, run_path).run()
            log.info(f"phase {phase.name} done in {time.monotonic() - started:.1f}s")
    else:
        executor = None
        for phase in phases:
            executor = _executor(config, phase, run_path, depends=executor)
        assert executor is not None  # a plan has at least one phase
        executor.run()  # submits the whole chain (each phase depends on the previous one)
        if not config.executor.slurm.wait:
            print(f"atom data: submitted to SLURM; the manifest appears at {run_path / 'manifest.json'}")
            return None
        wait_for_slurm(run_path, config)
    return print_summary(run_path)


def wait_for_slurm(run: Path, config: CurateConfig) -> None:
    wait_for_completions([run / "work" / "logs" / "manifest" / "completions" / "00000"], config.executor.slurm,
                         run / "work" / "slurm_logs")


def print_summary(run: Path) -> dict[str, Any]:

    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    throughput = {t["name"]: t for t in json.loads((run / "reports" / "throughput.json").read_text())["stages"]}
    print(f"atom data: {run}")
    print(f"  {'stage':<18}{'in':>8}{'kept':>8}{'MB in':>9}{'MB out':>9}{'docs/s':>9}  dropped")
    for s in manifest["stages"]:
        rate = throughput.get(s["name"], {}).get("docs_per_cpu_second")
        dropped = ", ".join(f"{k}={v}" for k, v in s["dropped"].items()) or "-"
        print(f"  {s['name']:<18}{s['documents_in']:>8}{s['documents_kept']:>8}{s['bytes_in'] / 1e6:>9.2f}"
              f"{s['bytes_out'] / 1e6:>9.2f}{rate if rate is not None else '-':>9}  {dropped}")
    quarantined = sum(manifest["quarantine"].values())
    reasons = ", ".join(f"{k}={v}" for k, v in manifest["quarantine"].items())
    print(f"  quarantined: {quarantined}" + (f" ({reasons}) -> {run / 'quarantine'}" if quarantined else ""))
    docs = sum(o["documents"] for o in manifest["outputs"])
    print(f"  curated: {docs} documents in {len(manifest['outputs'])} files under {run / 'curated'}")
    return manifest
