"""Every numeric setting has a stated range, and a value outside it stops the CLI before any work.

Two halves: a walk over the config models of every stage (and the cluster profile) that fails for a
number without a bound (or a free-form field without a reason written here), and a sweep that gives
each stage's CLI wrong values and expects exit code 2, one line on stderr naming the key, no traceback
and no run directory.
"""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from atom.cli import STAGES, load_stage, main
from data_pipeline.languages import LID176_LANGUAGES
from slurm.profile import ClusterProfile

REPO_ROOT = Path(__file__).resolve().parent.parent
BOUNDS = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)

# Fields whose values are not ours to bound, with the reason. Every other number needs ge/gt/le/lt.
FREE_FORM = {
    "QualityFilterConfig.params": "keyword arguments of a datatrove filter: names are checked against its "
                                  "constructor (check_filter_params), values are the filter's own",
    "QualityFilterConfig.per_language": "per-language datatrove filter arguments, as params (keys are checked "
                                        "against the language model's labels)",
    "BackendConfig.extra_body": "extra fields sent verbatim to the inference server, which checks them",
    "ParallelConfig.deepspeed_extra": "merged into DeepSpeed's own config, which DeepSpeed validates",
    "MidtrainConfig.model": "changes to the parent's model config, validated as MoEModelConfig (with its "
                            "bounds) once the parent checkpoint is read (midtrain.config.resolve_model)",
}


def config_roots() -> list[type[BaseModel]]:
    return [load_stage(name).config_cls for name in STAGES] + [ClusterProfile]


def _bounded(metadata: list) -> bool:
    flat = []
    for item in metadata:
        flat += item.metadata if isinstance(item, FieldInfo) else [item]
    return any(isinstance(m, BOUNDS) for m in flat)


def unbounded_leaves(tp: object, metadata: list, where: str, models: list[type[BaseModel]]) -> list[str]:
    """Dotted places under annotation `tp` where a number has no bound or a value is free-form.

    `metadata` holds the constraints that apply to `tp` itself (a field's, or Annotated's); they pass
    through `X | None` but not into a container's items. Sub-models are appended to `models`.
    """
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(tp)
        return unbounded_leaves(inner, [*metadata, *extra], where, models)
    if origin in (typing.Union, types.UnionType):
        return [p for arg in typing.get_args(tp) for p in unbounded_leaves(arg, metadata, where, models)]
    if origin is typing.Literal or tp in (bool, str, type(None)):
        return []
    if origin in (list, tuple):
        return [p for arg in typing.get_args(tp) if arg is not Ellipsis
                for p in unbounded_leaves(arg, [], f"{where}[]", models)]
    if origin is dict:
        return unbounded_leaves(typing.get_args(tp)[1], [], f"{where}{{}}", models)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        models.append(tp)
        return []
    if tp in (int, float):
        return [] if _bounded(metadata) else [f"{where}: {tp.__name__} without ge/gt/le/lt"]
    return [f"{where}: free-form {tp!r}"]  # Any, a bare dict: values nobody checks by type


def test_every_numeric_setting_has_a_range() -> None:
    models, seen, problems = config_roots(), set(), []
    while models:
        model = models.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            where = f"{model.__name__}.{name}"
            found = unbounded_leaves(field.annotation, list(field.metadata), where, models)
            if found and where not in FREE_FORM:
                problems += found
    assert not problems, "settings without a stated range:\n" + "\n".join(sorted(problems))
    walked = {m.__name__ for m in seen}
    assert {"MinhashConfig", "MoEConfig", "ClusterProfile", "EvalConfig", "SamplingConfig"} <= walked
    names = {f"{m.__name__}.{f}" for m in seen for f in m.model_fields}
    assert set(FREE_FORM) <= names, f"stale FREE_FORM entries: {set(FREE_FORM) - names}"


def test_language_codes_are_the_language_models_labels() -> None:
    from data_pipeline.curate.steps.transform import load_lid176

    labels = {label.removeprefix("__label__") for label in load_lid176().get_labels()}
    assert labels == LID176_LANGUAGES


# ---------------------------------------------------------------------------------------------
# The CLI sweep: (stage, config, --set override, the key the error must name)
# ---------------------------------------------------------------------------------------------

DATA = "configs/data/sample.yaml"
PRETRAIN = "configs/quickstart/pretrain.yaml"
MIDTRAIN = "configs/quickstart/midtrain.yaml"
SYNTH = "configs/data/synth_reasoning.yaml"
SYNTH_MODEL = "configs/data/synth_rejection.yaml"

BAD = [
    # the cases
    ("data", DATA, "stages.minhash.hashes_per_bucket=0", "stages.minhash.hashes_per_bucket"),
    ("data", DATA, "stages.minhash.n_grams=-3", "stages.minhash.n_grams"),
    ("data", DATA, "stages.language.languages=[xx]", "stages.language.languages"),
    ("data", DATA, "stages.language.languages=[en, klingon]", "stages.language.languages"),
    ("data", DATA, "stages.language.threshold=5", "stages.language.threshold"),
    ("data", DATA, "stages.language.threshold=-1", "stages.language.threshold"),
    ("data", DATA, "stages.url_filter.soft_word_threshold=-1", "stages.url_filter.soft_word_threshold"),
    ("data", DATA, "input.max_document_bytes=-5", "input.max_document_bytes"),
    # their kin
    ("data", DATA, "stages.language.languages=[]", "stages.language.languages"),
    ("data", DATA, "stages.minhash.num_buckets=0", "stages.minhash.num_buckets"),
    ("data", DATA, "stages.minhash.seed=-1", "stages.minhash.seed"),
    ("data", DATA, "stages.minhash.num_buckets=1000", "stages.minhash.num_buckets"),
    ("data", DATA, "stages.gopher_quality.per_language={xx: {max_avg_word_length: 12}}",
     "stages.gopher_quality.per_language"),
    ("data", DATA, "stages.decontamination.n=0", "stages.decontamination.n"),
    ("data", DATA, "stages.extraction.extractor=beautifulsoup", "stages.extraction.extractor"),
    ("data", DATA, "executor.tasks=0", "executor.tasks"),
    ("data", DATA, "executor.kind=kubernetes", "executor.kind"),
    ("data", DATA, "executor.slurm.time=1h", "executor.slurm.time"),
    ("data", DATA, "executor.slurm.poll_seconds=0", "executor.slurm.poll_seconds"),
    ("data", DATA, "output.row_group_size=0", "output.row_group_size"),
    ("data", DATA, "output.compression=lz4", "output.compression"),
    ("data", DATA, "run.seed=-1", "run.seed"),
    ("tokenizer", "configs/data/tokenizer.yaml", "vocab_size=100", "vocab_size"),
    ("tokenizer", "configs/data/tokenizer.yaml", "min_frequency=0", "min_frequency"),
    ("tokenize", "configs/data/tokenize.yaml", "shard_tokens=0", "shard_tokens"),
    ("tokenize", "configs/data/tokenize.yaml", "batch_size=-1", "batch_size"),
    ("tokenize", "configs/data/tokenize.yaml", "dtype=int8", "dtype"),
    ("mix", "configs/data/mix.yaml", "target_tokens=0", "target_tokens"),
    ("mix", "configs/data/mix.yaml", "sources.libreoffice-help-de.ratio=1.5", "sources.libreoffice-help-de.ratio"),
    ("mix", "configs/data/mix.yaml", "sources.libreoffice-help-de.ratio=0.9", "ratios must sum to 1"),
    ("mix", "configs/data/mix.yaml", "max_repetitions=0", "max_repetitions"),
    ("synth", SYNTH, "problems.count=-1", "problems.count"),
    ("synth", SYNTH, "problems.difficulties=[0]", "problems.difficulties"),
    ("synth", SYNTH, "problems.generators=[calculus]", "problems.generators"),
    ("synth", SYNTH, "backend.kind=openai", "backend.kind"),
    ("synth", SYNTH, "problems.language=english", "problems.language"),
    ("synth", SYNTH_MODEL, "sampling.top_p=1.5", "sampling.top_p"),
    ("synth", SYNTH_MODEL, "sampling.temperature=-0.1", "sampling.temperature"),
    ("synth", SYNTH_MODEL, "backend.device=gpu", "backend.device"),
    ("synth", SYNTH_MODEL, "rejection.keep_per_problem=5", "rejection.keep_per_problem"),
    ("synth", SYNTH_MODEL, "rephrase.min_length_ratio=6", "rephrase.min_length_ratio"),
    ("pretrain", PRETRAIN, "trainer.max_steps=0", "trainer.max_steps"),
    ("pretrain", PRETRAIN, "trainer.micro_batch=3", "trainer.micro_batch"),
    ("pretrain", PRETRAIN, "trainer.device=tpu", "trainer.device"),
    ("pretrain", PRETRAIN, "data.seq_len=100000", "model.max_seq_len"),
    ("pretrain", PRETRAIN, "model.moe.top_k=9", "moe.n_experts"),
    ("pretrain", PRETRAIN, "model.n_heads=5", "n_heads"),
    ("pretrain", PRETRAIN, "model.rope.factor=4", "rope.scaling"),
    ("pretrain", PRETRAIN, "model.rope.scaling=yarn", "rope.original_max_position"),
    ("pretrain", PRETRAIN, "optimizer.lr=-1", "optimizer.lr"),
    ("pretrain", PRETRAIN, "optimizer.betas=[0.9, 1.5]", "optimizer.betas"),
    ("pretrain", PRETRAIN, "schedule.min_lr_ratio=2", "schedule.min_lr_ratio"),
    ("pretrain", PRETRAIN, "schedule.kind=exponential", "schedule.kind"),
    ("pretrain", PRETRAIN, "schedule.warmup_steps=100", "schedule.warmup_steps"),
    ("pretrain", PRETRAIN, "parallel.shard_size=2", "parallel.shard_size"),
    ("pretrain", PRETRAIN, "parallel.zero_stage=4", "parallel.zero_stage"),
    ("pretrain", PRETRAIN, "metrics.peak_flops_per_device=-5", "metrics.peak_flops_per_device"),
    ("pretrain", PRETRAIN, "checkpoint.keep_last=0", "checkpoint.keep_last"),
    ("pretrain", PRETRAIN, "data.path=no/such/mixture", "key 'data': input not found: no/such/mixture"),
    ("midtrain", MIDTRAIN, "evals.reasoning_difficulties=[7]", "evals.reasoning_difficulties"),
    ("midtrain", MIDTRAIN, "evals.reasoning_generators=[calculus]", "evals.reasoning_generators"),
    ("midtrain", MIDTRAIN, "evals.passkey_lengths=[0]", "evals.passkey_lengths"),
    ("midtrain", MIDTRAIN, "load=optimizer", "load"),
    ("midtrain", MIDTRAIN, "trainer.micro_batch=3", "trainer.micro_batch"),
]


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _assert_refused(code: int, err: str, key: str, run_dir: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and key in lines[0], err
    assert "unknown key" not in err, err  # refused for its value, not its name
    assert "Traceback" not in err
    assert not run_dir.exists(), f"{run_dir} created by a refused config"


@pytest.mark.parametrize(("stage", "config", "override", "key"), BAD, ids=[c[2] for c in BAD])
def test_bad_value_is_one_line_exit_2_and_no_run_dir(stage, config, override, key, tmp_path, capsys,
                                                     monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    run_dir = tmp_path / "run"
    code, err = _run_cli([stage, config, "--set", f"run.dir={run_dir}", "--set", override], capsys)
    _assert_refused(code, err, key, run_dir)


def test_longdocs_and_soup_bounds(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    longdocs = tmp_path / "longdocs.yaml"
    longdocs.write_text(f"run: {{dir: {run_dir}}}\ninput: {tmp_path}\nmin_chars: 1000\n")
    for override, key in [("min_chars=0", "min_chars"), ("per_source={doc: -1}", "per_source.doc")]:
        _assert_refused(*_run_cli(["longdocs", str(longdocs), "--set", override], capsys), key, run_dir)
    soup = tmp_path / "soup.yaml"
    soup.write_text(f"run: {{dir: {run_dir}}}\ninputs: [{tmp_path}/a, {tmp_path}/b]\n")
    _assert_refused(*_run_cli(["soup", str(soup), "--set", "weights=[1.5, -0.5]"], capsys), "weights", run_dir)


PROFILE_BAD = [("local", "nodes=0", "nodes"), ("local", "gpus_per_node=-1", "gpus_per_node"),
               ("local", "time=forever", "time"), ("local", "requeue.warn_seconds=3600", "requeue.warn_seconds"),
               ("local", "rdzv_port=80", "rdzv_port"), ("local", "requeue.max_requeues=-1", "requeue.max_requeues"),
               ("local", "procs_per_node=0", "procs_per_node"), ("example_gpu", "procs_per_node=16", "gpus_per_node")]


@pytest.mark.parametrize(("profile", "override", "key"), PROFILE_BAD, ids=[c[1] for c in PROFILE_BAD])
def test_submit_refuses_bad_profile_and_config_values(profile, override, key, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    run_dir = tmp_path / "run"
    argv = ["submit", PRETRAIN, "--stage", "pretrain", "--profile", profile, "--set", f"run.dir={run_dir}"]
    _assert_refused(*_run_cli([*argv, "--profile-set", override], capsys), key, run_dir)
    _assert_refused(*_run_cli([*argv, "--set", "trainer.max_steps=-1"], capsys), "trainer.max_steps", run_dir)


@pytest.mark.parametrize(("stage", "config", "override", "key"), [
    ("data", DATA, "stages.minhash.hashes_per_bucket=0", "stages.minhash.hashes_per_bucket"),
    ("pretrain", PRETRAIN, "model.moe.top_k=9", "moe.n_experts"),
])
def test_real_process_prints_one_line_without_traceback(stage, config, override, key, tmp_path) -> None:
    """The in-process sweep above, as a user runs it: `python -m atom` in its own process."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "atom", stage, config, "--set", f"run.dir={run_dir}",
                           "--set", override], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    _assert_refused(proc.returncode, proc.stderr, key, run_dir)
    assert proc.stdout == ""
