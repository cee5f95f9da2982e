"""One `Record` per generated sample (reference trace, model attempt or rephrasing): the side table.

Every record says who made it (generator + version, template, seed; backend model/hash or endpoint +
model; sampling parameters), what came back, the verifier's verdict, and what happened to it
(`accepted` by verification, `kept` in the curated output, else `drop_reason`). Rejected and malformed
attempts are recorded too, so `accepted + rejected = attempted` can be checked per problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa

DROP_WRONG = "wrong_answer"
DROP_MALFORMED = "malformed_output"
DROP_EXTRA = "extra_for_problem"
DROP_DUPLICATE = "duplicate"
DROP_LENGTH = "length_ratio"

TEMPLATE_BACKEND = {"kind": "template", "model": "", "model_sha256": "", "endpoint": ""}


@dataclass
class Record:
    record_id: str
    kind: str  # trace | rephrase
    generator: str
    generator_version: int
    template: str
    difficulty: int | None
    seed: int  # the problem's seed (trace) or the rephrasing's seed
    attempt: int
    sample_seed: int | None  # the seed sent to the backend (None for template traces)
    source_doc_id: str | None  # rephrase: the curated document rephrased
    source_url: str | None
    backend_kind: str
    backend_model: str
    backend_model_sha256: str
    backend_endpoint: str
    sampling: str  # canonical JSON of the sampling parameters ("{}" for template traces)
    prompt: str
    response: str | None
    status: str  # trace: correct | wrong | malformed; rephrase: accepted | rejected | malformed
    accepted: bool
    reason: str
    expected_answer: str | None
    parsed_answer: str | None
    text: str | None = None  # the document this record becomes when kept (not stored in the side table)
    license: str | None = None  # of that document (not stored: it is in the curated row)
    source: str | None = None
    language: str | None = None
    kept: bool = False
    drop_reason: str | None = None
    doc_id: str | None = None


STORED = [f.name for f in fields(Record) if f.name not in ("text", "license", "source", "language")]
SCHEMA = pa.schema([
    ("record_id", pa.string()), ("kind", pa.string()), ("generator", pa.string()),
    ("generator_version", pa.int32()), ("template", pa.string()), ("difficulty", pa.int32()),
    ("seed", pa.int64()), ("attempt", pa.int32()), ("sample_seed", pa.int64()), ("source_doc_id", pa.string()),
    ("source_url", pa.string()), ("backend_kind", pa.string()), ("backend_model", pa.string()),
    ("backend_model_sha256", pa.string()), ("backend_endpoint", pa.string()), ("sampling", pa.string()),
    ("prompt", pa.string()), ("response", pa.string()), ("status", pa.string()), ("accepted", pa.bool_()),
    ("reason", pa.string()), ("expected_answer", pa.string()), ("parsed_answer", pa.string()),
    ("kept", pa.bool_()), ("drop_reason", pa.string()), ("doc_id", pa.string()),
])
assert SCHEMA.names == STORED, (SCHEMA.names, STORED)


def backend_columns(describe: dict[str, str]) -> dict[str, Any]:
    return {f"backend_{k}": describe.get(k, "") for k in ("kind", "model", "model_sha256", "endpoint")}


def sampling_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def records_table(records: list[Record]) -> pa.Table:
    rows = [asdict(r) for r in records]
    return pa.table({name: pa.array([row[name] for row in rows], SCHEMA.field(name).type) for name in STORED},
                    schema=SCHEMA)
