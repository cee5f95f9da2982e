"""`atom eval TARGET CONFIG`: score a release, or a training run's checkpoint, on benchmark tasks.

TARGET is a release directory (its Hugging Face weights and tokenizer are what is scored, through atom's
model: `import_hf`) or a pretraining / mid-training run directory (its newest complete checkpoint, or
`step`; the tokenizer of the data it trained on). The run directory gets:

    results.json          per task: eval set, instances, metrics, primary score, chance, quarantined lines
    items/<task>.jsonl    per instance: the choices' log-likelihoods and predictions, or the generation
    quarantine.jsonl      eval-file lines that could not be read (file, line, reason)
    lm_eval/              the multiple-choice tasks as lm-evaluation-harness tasks over the same instances
                          (`evaluation/lm_eval_tasks.py`): the independent check of the scores

The same config and target give the same bytes (no timestamps; greedy decoding; fixed batch order).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from core.config import ConfigError, StageConfig
from core.rundir import RunDir, write_atomic, write_json
from core.stage import Stage
from evaluation.catalog import EVAL_SETS
from evaluation.config import TasksConfig
from evaluation.instances import ChoiceItem
from evaluation.lm_eval_tasks import write_lm_eval_tasks
from evaluation.runner import TaskResult, run_tasks, table
from evaluation.scoring import TokenizerCodec

if TYPE_CHECKING:
    from pretrain.model.transformer import Transformer

RESULTS = "results.json"
SCHEMA = "atom.eval/1"


class EvaluateConfig(StageConfig, TasksConfig):
    target: str = Field("", description="release or run directory (the TARGET argument of `atom eval`)")
    step: int | None = Field(None, ge=0)  # a run target's checkpoint (None: the newest)
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)


def json_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n"


def _target(cfg: EvaluateConfig, must_exist: bool = True) -> Path:
    """The target directory; a plan (--dry-run) may name one an earlier step has yet to write."""
    if not cfg.target:
        raise ConfigError("target: no release or run directory given (atom eval TARGET CONFIG)")
    path = Path(cfg.target)
    if must_exist and not path.is_dir():
        raise ConfigError(f"target: not a directory: {path}")
    return path


def codec(tokenizer_dir: Path) -> TokenizerCodec:
    """The tokenizer of a run or release, its end-of-text token the one its tokenizer_config.json names."""
    from data_pipeline.tokenizer.train import eos_token, load_tokenizer

    return TokenizerCodec(load_tokenizer(tokenizer_dir), eos_token(tokenizer_dir))


def load_target(path: Path, step: int | None) -> tuple[Transformer, TokenizerCodec, dict[str, Any]]:
    """(model in eval mode, its tokenizer, description of what was loaded)."""
    from pretrain.model.hf_export import import_hf
    from release.build import is_release

    if is_release(path):
        release = json.loads((path / "release.json").read_text(encoding="utf-8"))
        model = import_hf(path)
        return model.eval(), codec(path), {"kind": "release", "name": release["name"],
                                           "step": release["weights"]["step"]}
    from pretrain.checkpoint_state import load_model_weights
    from pretrain.model.config import MoEModelConfig
    from pretrain.model.transformer import Transformer
    from release import data as rdata
    from release.lineage import lineage

    leaf = lineage(path, step)[-1]
    model = Transformer(MoEModelConfig.model_validate({**leaf.model, "fp8": None}))
    load_model_weights(model, leaf.checkpoint.path)
    src = Path(leaf.header["stream"]["path"])
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    return model.eval(), codec(rdata.tokenizer_dir(src, manifest)), {"kind": leaf.kind, "name": path.name,
                                                                      "step": leaf.step}


def plan(cfg: EvaluateConfig) -> list[str]:
    target = _target(cfg, must_exist=False)
    tasks = ", ".join(f"{t.name}" + (f" (first {t.limit})" if t.limit else "") for t in cfg.tasks)
    return [f"load {target} ({'newest checkpoint' if cfg.step is None else f'step {cfg.step}'} of a run, "
            f"or a release's weights) on {cfg.device}",
            f"score {tasks}, {cfg.batch_size} rows per forward",
            f"write {Path(cfg.run.dir) / RESULTS}, items/<task>.jsonl, quarantine.jsonl"]


def results_record(described: dict[str, Any], results: list[TaskResult]) -> dict[str, Any]:
    return {"schema": SCHEMA, "target": described,
            "tasks": {r.task.name: r.summary() for r in results},
            "eval_sets": {name: {"license": s.license, "origin": s.origin, "published": s.published}
                          for name, s in sorted(EVAL_SETS.items()) if any(r.task.eval_set == name for r in results)}}


def lm_eval_command(target: Path, run: Path, tasks: list[str], cfg: EvaluateConfig) -> str:
    """The lm-evaluation-harness command scoring the same instances of the same weights (a release)."""
    return shlex.join(["lm_eval", "--model", "hf", "--model_args", f"pretrained={target},dtype=float32",
                       "--device", cfg.device, "--batch_size", str(cfg.batch_size),
                       "--include_path", str(run / "lm_eval"), "--tasks", ",".join(tasks),
                       "--log_samples", "--output_path", str(run / "lm_eval_out")])


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    target = _target(cfg)
    rundir = RunDir.claim(cfg.run.dir, "eval", cfg, cfg.run.overwrite, inputs={"target": target})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model, text_codec, described = load_target(target, cfg.step)
    model.to(device)

    def logits(tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens).logits

    results = run_tasks(cfg, logits, text_codec, model.cfg.max_seq_len, device)
    items_dir = rundir.file("items")
    items_dir.mkdir(exist_ok=True)
    for r in results:
        write_atomic(items_dir / f"{r.task.name.replace(':', '_')}.jsonl",
                     "".join(json_line(i) for i in r.items))
    write_atomic(rundir.file("quarantine.jsonl"), "".join(
        json_line({"task": r.task.name, "file": q.file, "line": q.line, "reason": q.reason})
        for r in results for q in r.quarantined))
    written, _ = write_lm_eval_tasks([(r.task.name, [i for i in r.instances if isinstance(i, ChoiceItem)])
                                      for r in results if r.task.kind == "choice"], rundir.file("lm_eval"))
    record = results_record(described, results)
    write_json(rundir.file(RESULTS), record)
    print(f"atom eval: {described['kind']} {target} (step {described['step']}) -> {rundir.path / RESULTS}")
    for line in table(results):
        print(line)
    quarantined = sum(len(r.quarantined) for r in results)
    if written and described["kind"] == "release":
        print(f"  check with lm-eval: {lm_eval_command(target, rundir.path, written, cfg)}")
    if quarantined:
        print(f"  quarantined: {quarantined} unreadable eval lines, listed in {rundir.file('quarantine.jsonl')}")
    return record


STAGE = Stage("eval", "score a release or a run's checkpoint on benchmark tasks (ARC, HellaSwag, MMLU, GSM8K, ...)",
              EvaluateConfig, plan, run, lambda cfg: {"target": _target(cfg)})
