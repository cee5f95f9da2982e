"""The `atom` command: subcommands, --dry-run, --set, and one-line user errors with exit code 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atom import cli
from core.config import ConfigModel, RunConfig, apply_overrides
from core.stage import Stage
from tests.data_pipeline.synthetic_fixtures import tiny_model
from tests.data_pipeline.tokens_fixtures import stdlib_documents, write_curated_run


class Toy(ConfigModel):
    run: RunConfig
    lr: float = 0.1


RAN: list[Toy] = []
TOY = Stage("toy", "a toy stage", Toy, plan=lambda c: [f"train at lr={c.lr}"], run=RAN.append)


@pytest.fixture
def toy(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setitem(cli.STAGES, "toy", ("unused:TOY", "a toy stage"))
    monkeypatch.setattr(cli, "load_stage", lambda name: TOY)
    RAN.clear()
    path = tmp_path / "toy.yaml"
    path.write_text(f"run: {{dir: {tmp_path / 'run'}}}\nlr: 0.5\n")
    return path


def test_dry_run_prints_resolved_config_and_runs_nothing(toy: Path, capsys):
    assert cli.main(["toy", str(toy), "--set", "lr=3e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "train at lr=0.0003" in out
    assert RAN == []


def test_run_passes_validated_config(toy: Path):
    assert cli.main(["toy", str(toy)]) == 0
    assert RAN and RAN[0].lr == 0.5


@pytest.mark.parametrize("extra,needle", [
    (["--set", "lrr=1"], "unknown key 'lrr'"),
    (["--set", "lr=fast"], "key 'lr'"),
])
def test_user_errors_are_one_line_exit_2(toy: Path, capsys, extra, needle):
    assert cli.main(["toy", str(toy), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(toy: Path, capsys):
    assert cli.main(["toy", str(toy.parent / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


EXPECTED_SUBCOMMANDS = {"data", "quickstart", "tokenizer", "tokenize", "mix", "longdocs", "synth", "pretrain",
                        "midtrain", "soup", "eval", "audit", "release", "submit", "jobs"}


def listed_subcommands(help_text: str) -> set[str]:
    """The names argparse lists under COMMAND (4-space indent; wrapped help lines are indented further)."""
    block = help_text.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    return {m.group(1) for m in re.finditer(r"^ {4}(\S+)", block, flags=re.MULTILINE)}


def test_console_script_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "atom", "--help"], capture_output=True, text=True, check=True)
    assert listed_subcommands(out.stdout) == EXPECTED_SUBCOMMANDS


@pytest.mark.parametrize("name", sorted(cli.STAGES))
def test_help_example_of_set_is_a_key_of_that_stage(name: str, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: the example is not wrapped at its hyphen
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    example = re.search(r"e\.g\. --set (\S+=\S*)", capsys.readouterr().out).group(1)
    apply_overrides({}, [example], cli.load_stage(name).config_cls, {})  # raises ConfigError on an unknown key


REPO = Path(__file__).resolve().parents[2]


def test_dry_run_of_an_invalid_config_prints_only_the_error(tmp_path: Path):
    config = REPO / "configs" / "quickstart" / "midtrain.yaml"
    proc = subprocess.run([sys.executable, "-m", "atom", "midtrain", str(config), "--set",
                           f"parent={tmp_path / 'no-such-run'}", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"atom midtrain: error: {config}: parent: {tmp_path / 'no-such-run'} is "
                                        "neither a run directory with checkpoints/ nor a checkpoint"]


def test_data_stages_print_what_they_wrote(tmp_path: Path, capsys):
    """tokenizer -> tokenize -> mix and synth, through the CLI with the quickstart's configs on real text."""
    curated = write_curated_run(tmp_path / "curated", stdlib_documents(30))
    quick = REPO / "configs" / "quickstart"

    def run(stage: str, config: str, *overrides: str) -> tuple[Path, dict, str]:
        out_dir = tmp_path / stage
        args = [stage, str(quick / config), "--set", f"run.dir={out_dir}"]
        assert cli.main(args + [x for o in overrides for x in ("--set", o)]) == 0
        return out_dir, json.loads((out_dir / "manifest.json").read_text()), capsys.readouterr().out

    tok, manifest, out = run("tokenizer", "tokenizer.yaml", f"input={curated}", "vocab_size=512")
    assert out.startswith(f"atom tokenizer: {tok}\n") and "vocab: 512 tokens (6 special)" in out
    assert f"trained on: {manifest['training_data']['docs']} documents" in out
    assert "documents per source: stdlib-api-docs=30, stdlib-module-docs=30" in out

    tokens, manifest, out = run("tokenize", "tokens.yaml", f"input={curated}", f"tokenizer={tok}")
    assert out.startswith(f"atom tokenize: {tokens}\n")
    assert f"tokens: {manifest['n_tokens']:,} (uint16) from 60 documents in 1 shard(s) under {tokens / 'tokens'}" in out
    api = manifest["sources"]["stdlib-api-docs"]["tokens"]
    assert f"source stdlib-api-docs: {api:,} tokens, 30 documents (PSF-2.0)" in out

    mix, manifest, out = run("mix", "mix_pretrain.yaml", f"datasets=[{tokens}]", "target_tokens=20000",
                             "sources={stdlib-api-docs: {ratio: 0.5}, stdlib-module-docs: {ratio: 0.5}}")
    assert out.startswith(f"atom mix: {mix}\n")
    assert f"tokens: {manifest['n_tokens']:,} (target 20,000) in {manifest['n_docs']:,} documents" in out
    assert "source stdlib-module-docs:" in out and f"order: {mix / 'sequence.npy'}" in out

    synth, manifest, out = run("synth", "synth.yaml", "problems.count=20")
    assert out.startswith(f"atom synth: {synth} (backend template)\n")
    kept = sum(o["documents"] for o in manifest["outputs"])
    assert "trace: 20 attempted, 20 accepted, 0 rejected" in out
    assert f"curated: {kept} documents in 1 files under {synth / 'curated'}" in out


NOISE = ("Failed to load", "is an Enum subclass", "Setting accelerator to CPU")


def test_a_stage_run_prints_no_library_noise(tmp_path_factory, tmp_path: Path):
    """`atom synth` with a local model loads transformers, which imports torchao: its kernel-loading failures and
    torch's pytree deprecation used to fill stderr."""
    model_dir = tiny_model(tmp_path_factory)[0]
    proc = subprocess.run([sys.executable, "-m", "atom", "synth", str(REPO / "configs/quickstart/synth.yaml"),
                           "--set", f"run.dir={tmp_path / 'synth'}", "--set", "problems.count=2",
                           "--set", "backend.kind=local", "--set", f"backend.model_dir={model_dir}",
                           "--set", "sampling.max_new_tokens=4", "--set", "rejection.samples_per_problem=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"atom synth: {tmp_path / 'synth'} (backend local)")
    assert [n for n in NOISE if n in proc.stdout + proc.stderr] == []


def test_only_the_library_noise_is_silenced():
    """The real libraries imported after the CLI's filters: their notices are gone, other messages still show."""
    script = """
import logging, warnings
from atom.cli import silence_library_noise
silence_library_noise()
import deepspeed, torchao  # noqa: F401  (imports that print the notices)
logging.getLogger("DeepSpeed").warning("a genuine DeepSpeed warning")
logging.getLogger("torchao").warning("Failed to load my_extension.so: it matters")
warnings.warn("a genuine user warning")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    out = proc.stdout + proc.stderr
    assert "a genuine DeepSpeed warning" in out and "Failed to load my_extension.so: it matters" in out
    assert "UserWarning: a genuine user warning" in proc.stderr
    assert [n for n in NOISE if n in out.replace("Failed to load my_extension.so", "")] == []
