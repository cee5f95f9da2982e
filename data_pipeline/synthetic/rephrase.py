"""WRAP-style rephrasing: curated documents rewritten by a model in another style (Maini et al., 2024).

Each curated document (read in the curated run's fixed order) is cut to `max_passage_chars` (at a
paragraph or word boundary) and sent once per style through the same backends as the traces. There is
no answer to verify, so the checks are structural: an empty response (or only a reasoning block) is
malformed (quarantined); a rephrasing whose length is outside [min_ratio, max_ratio] x the passage's is
rejected. A rephrasing is a derivative of its source: it keeps the source's license and language, and
records the source id (also in its url: `synthetic://atom/rephrase/<style>?source_id=<id>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from data_pipeline.synthetic.backends import Backend, Request, Sampling
from data_pipeline.synthetic.problems import derive_seed
from data_pipeline.synthetic.records import DROP_LENGTH, DROP_MALFORMED, Record, backend_columns, sampling_json
from evaluation.verify import END_MARKERS, THINK_CLOSE

GENERATOR = "rephrase"
VERSION = 1
STYLES = {
    "wikipedia": (
        "Rewrite the following passage in the style of a Wikipedia article: neutral, encyclopedic and "
        "well organised. Keep every fact and add none. Reply with the rewritten text only.\n\n"
        "Passage:\n{passage}"
    ),
    "qa": (
        "Rewrite the following passage as a series of questions and answers that together cover all of "
        'its content, each pair as "Question: ..." then "Answer: ...". Keep every fact and add none. '
        "Reply with the questions and answers only.\n\nPassage:\n{passage}"
    ),
}


@dataclass(frozen=True)
class SourceDoc:
    id: str
    text: str
    license: str
    url: str
    language: str


def passage(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars`, at the last paragraph break or else word break before it."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    for sep in ("\n\n", "\n", " "):
        at = cut.rfind(sep)
        if at > max_chars // 2:
            return cut[:at].rstrip()
    return cut


def clean_rephrasing(response: str) -> str:
    text = response
    if THINK_CLOSE in text:
        text = text.split(THINK_CLOSE, 1)[1]
    text = text.strip()
    for marker in END_MARKERS:
        while text.endswith(marker):
            text = text[: -len(marker)].rstrip()
    return text


def rephrase_documents(docs: Sequence[SourceDoc], styles: Sequence[str], backend: Backend, sampling: Sampling,
                       run_seed: int, max_passage_chars: int, min_ratio: float, max_ratio: float,
                       source: str) -> list[Record]:
    described = backend_columns(backend.describe())
    params = sampling_json(sampling.to_dict())
    jobs = []
    for doc in docs:
        part = passage(doc.text, max_passage_chars)
        for style in styles:
            jobs.append((doc, style, part, STYLES[style].format(passage=part),
                         derive_seed(run_seed, GENERATOR, style, doc.id)))
    responses = backend.generate([Request([{"role": "user", "content": prompt}], seed)
                                  for _, _, _, prompt, seed in jobs], sampling)
    records = []
    for (doc, style, part, prompt, seed), response in zip(jobs, responses, strict=True):
        text = clean_rephrasing(response) if response is not None else ""
        ratio = len(text) / max(1, len(part))
        if not text:
            status, accepted, drop, reason = "malformed", False, DROP_MALFORMED, "empty rephrasing"
        elif not min_ratio <= ratio <= max_ratio:
            status, accepted, drop = "rejected", False, DROP_LENGTH
            reason = f"length ratio {ratio:.2f} outside [{min_ratio}, {max_ratio}]"
        else:
            status, accepted, drop, reason = "accepted", True, None, f"length ratio {ratio:.2f}"
        records.append(Record(
            record_id=f"rephrase/{style}/{doc.id}", kind="rephrase", generator=GENERATOR, generator_version=VERSION,
            template=f"rephrase/{style}", difficulty=None, seed=seed, attempt=0, sample_seed=seed,
            source_doc_id=doc.id, source_url=doc.url, **described, sampling=params, prompt=prompt,
            response=response, status=status, accepted=accepted, reason=reason, expected_answer=None,
            parsed_answer=None, text=text if accepted else None, license=doc.license, source=source,
            language=doc.language,
            drop_reason=drop))
    return records


def url_for(style: str, doc_id: str) -> str:
    return f"synthetic://atom/rephrase/{style}?source_id={quote(doc_id, safe='')}"
