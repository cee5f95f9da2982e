"""The `atom` command: subcommands, --dry-run, --set, and one-line user errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from atom import cli
from data_pipeline.config import ConfigModel, RunConfig
from data_pipeline.stage import Stage


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


def test_console_script_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "atom", "--help"], capture_output=True, text=True, check=True)
    for name in cli.STAGES:
        assert name in out.stdout
