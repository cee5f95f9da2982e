"""The tasks atom scored, as lm-evaluation-harness tasks that read the same instances offline.

For every multiple-choice task of an `atom eval` run this writes `<dir>/<name>.jsonl` (exactly the instances
atom scored, in its order: the context, the choices, the gold index) and `<dir>/<name>.yaml`
(`output_type: multiple_choice` over a local JSON file). lm-eval then builds the same (context,
continuation) requests atom built, so running it on the same release is an independent check of atom's
tokenization, log-likelihoods and metrics:

    lm_eval --model hf --model_args pretrained=RELEASE,dtype=float32 --device cpu \\
        --include_path RUN/lm_eval --tasks atom_arc_easy_rc_0shot --log_samples --output_path OUT

A task whose choices have contexts of their own (Winogrande's partial scoring) has no plain
`multiple_choice` form and is left out (named in the returned list of skipped tasks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from core.rundir import write_atomic
from evaluation.instances import ChoiceItem


def lm_eval_name(task: str) -> str:
    return "atom_" + "".join(c if c.isalnum() else "_" for c in task)


def task_yaml(name: str, data: Path, delimiter: str) -> str:
    """lm-eval's YAML for `name`: each `doc_to_*` names a field of the JSONL, so no template rewrites it."""
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        f"  data_files: {{test: {json.dumps(str(data))}}}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: context",
        "doc_to_choice: choices",
        "doc_to_target: gold",
        f"target_delimiter: {json.dumps(delimiter)}",
        "num_fewshot: 0",
        "metric_list:",
        "  - {metric: acc, aggregation: mean, higher_is_better: true}",
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}",
        "",
    ])


def write_lm_eval_tasks(tasks: Sequence[tuple[str, Sequence[ChoiceItem]]], out: Path) -> tuple[list[str], list[str]]:
    """(lm-eval task names written, atom tasks skipped) for `(atom task name, scored items)` pairs."""
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for task, items in tasks:
        if any(len(set(i.contexts)) != 1 for i in items):
            skipped.append(task)
            continue
        spaced = all(c.startswith(" ") for i in items for c in i.continuations)
        delimiter = " " if spaced else ""
        name = lm_eval_name(task)
        data = (out / f"{name}.jsonl").resolve()
        write_atomic(data, "".join(json.dumps({
            "id": i.id, "context": i.contexts[0], "gold": i.gold,
            "choices": [c[len(delimiter):] for c in i.continuations]}, ensure_ascii=False) + "\n" for i in items))
        write_atomic(out / f"{name}.yaml", task_yaml(name, data, delimiter))
        written.append(name)
    return written, skipped
