"""Reasoning traces: the generator's reference traces, or model-written traces by rejection sampling.

Rejection sampling: every problem is asked `samples_per_problem` times (seed per attempt derived from
the run seed and the problem), each answer goes through the verifier, and the first `keep_per_problem`
correct ones are kept; wrong ones are rejected, malformed ones (no parsable final answer, or no text in
the response) are rejected and quarantined. Every attempt becomes a `Record`, so for each problem
accepted + rejected = attempted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from data_pipeline.synthetic.backends import Backend, Request, Sampling
from data_pipeline.synthetic.problems import Problem, chatml, derive_seed
from data_pipeline.synthetic.records import (
    DROP_EXTRA,
    DROP_MALFORMED,
    DROP_WRONG,
    TEMPLATE_BACKEND,
    Record,
    backend_columns,
    sampling_json,
)
from evaluation.verify import CORRECT, END_MARKERS, MALFORMED, THINK_CLOSE, THINK_OPEN, verify

BATCH = 256  # requests handed to a backend at once (an endpoint keeps `concurrency` of them in flight)


def _base(problem: Problem, attempt: int) -> dict:
    return {
        "record_id": f"{problem.template}/{problem.difficulty}/{problem.seed}/{attempt}",
        "kind": "trace", "generator": problem.generator, "generator_version": problem.version,
        "template": problem.template, "difficulty": problem.difficulty, "seed": problem.seed,
        "attempt": attempt, "source_doc_id": None, "source_url": None, "prompt": problem.prompt(),
        "expected_answer": problem.answer_text,
    }


def assistant_text(response: str) -> str:
    """A model's answer as it goes into the document: trimmed, end markers off, `<think>` restored when
    the chat template had opened it."""
    text = response.strip()
    for marker in END_MARKERS:
        while text.endswith(marker):
            text = text[: -len(marker)].rstrip()
    if THINK_CLOSE in text and THINK_OPEN not in text:
        text = f"{THINK_OPEN}\n{text}"
    return text


def trace_document(problem: Problem, answer: str) -> str:
    return chatml([*problem.messages(), {"role": "assistant", "content": answer}])


def reference_records(problems: Sequence[Problem]) -> list[Record]:
    """The generator's own traces, each checked by the verifier (a failure is a generator bug)."""
    records = []
    for p in problems:
        trace = p.trace()
        verdict = verify(trace, p.answer, p.unit)
        if not verdict.correct:
            raise RuntimeError(f"{p.template} seed {p.seed}: reference trace fails verification: {verdict.reason}")
        records.append(Record(**_base(p, 0), sample_seed=None, **backend_columns(TEMPLATE_BACKEND),
                              sampling=sampling_json({}), response=trace, status=verdict.status, accepted=True,
                              reason=verdict.reason, parsed_answer=verdict.parsed, text=trace_document(p, trace)))
    return records


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def rejection_sample(problems: Sequence[Problem], backend: Backend, sampling: Sampling, run_seed: int,
                     samples_per_problem: int, keep_per_problem: int, require_think: bool = True,
                     log=None) -> list[Record]:
    """Ask `backend` for `samples_per_problem` traces per problem; verify; keep the first correct ones."""
    described = backend_columns(backend.describe())
    params = sampling_json(sampling.to_dict())
    jobs = [(p, a, derive_seed(run_seed, "sample", p.template, p.seed, a))
            for p in problems for a in range(samples_per_problem)]
    records: list[Record] = []
    kept_per_problem: dict[tuple[str, int], int] = {}
    for chunk in _chunks(jobs, BATCH):
        responses = backend.generate([Request(p.messages(), seed) for p, _, seed in chunk], sampling)
        for (p, attempt, seed), response in zip(chunk, responses, strict=True):
            if response is None:
                status, reason, parsed, answer = MALFORMED, "no text in the response", None, None
            else:
                verdict = verify(response, p.answer, p.unit, require_think)
                status, reason, parsed = verdict.status, verdict.reason, verdict.parsed
                answer = assistant_text(response)
            accepted = status == CORRECT
            drop = None if accepted else DROP_MALFORMED if status == MALFORMED else DROP_WRONG
            key = (p.template, p.seed)
            if accepted:
                if kept_per_problem.get(key, 0) >= keep_per_problem:
                    drop = DROP_EXTRA
                else:
                    kept_per_problem[key] = kept_per_problem.get(key, 0) + 1
            records.append(Record(**_base(p, attempt), sample_seed=seed, **described, sampling=params,
                                  response=response, status=status, accepted=accepted, reason=reason,
                                  parsed_answer=parsed, drop_reason=drop,
                                  text=trace_document(p, answer) if answer is not None and accepted and drop is None
                                  else None))
        if log:
            done = len(records)
            log.info("rejection sampling: %d/%d attempts, %d accepted", done, len(jobs),
                     sum(r.accepted for r in records))
    return records
