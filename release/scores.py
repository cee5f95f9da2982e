"""What the release card reports of a stage's training scores, derived from its metrics.jsonl alone (plus the
eval data for instance counts and chance), so `atom audit` recomputes every figure from the release's files.

    last_losses        the last logged training and validation losses
    in_loop_benchmarks the stage's last in-loop benchmark eval (`downstream:`) at or before the released
                       step: per task its eval set, instances, metrics, primary metric and chance
"""

from __future__ import annotations

from typing import Any

from core.config import ConfigError
from evaluation.config import TaskConfig
from evaluation.runner import chance, load_items, primary_metric


def last_losses(records: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of the training and validation losses."""
    out: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if (key == "loss" or key.startswith("val/")) and isinstance(value, (int, float)):
                out[key] = value
    return dict(sorted(out.items()))


def in_loop_benchmarks(config: dict[str, Any], records: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """{step, tasks: [...]} of the last in-loop eval at or before `step`; None when the stage ran none."""
    downstream = config.get("downstream")
    if not downstream:
        return None
    tasks = [TaskConfig.model_validate(t) for t in downstream["tasks"]]
    keys = [f"eval/{t.name}/" for t in tasks]
    logged = [r for r in records if r.get("step", 0) <= step and any(k.startswith(keys[0]) for k in r)]
    if not logged:
        return None
    last = logged[-1]
    rows = []
    for task_cfg, prefix in zip(tasks, keys, strict=True):
        metrics = {k[len(prefix):]: v for k, v in sorted(last.items()) if k.startswith(prefix)}
        try:
            task, items = load_items(task_cfg, [])
            facts: dict[str, Any] = {"eval_set": task.eval_set, "instances": len(items),
                                     "primary_metric": primary_metric(task), "chance": chance(items)}
        except ConfigError:  # a user task whose file is gone: its scores stand, its facts are unknown
            facts = {"eval_set": task_cfg.name, "instances": None, "primary_metric": None, "chance": None}
        rows.append({"task": task_cfg.name, **facts, "metrics": metrics})
    return {"step": int(last["step"]), "tasks": rows}
