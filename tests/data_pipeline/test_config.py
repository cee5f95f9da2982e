"""The config system: typed values, `extends:`, overrides, and errors that name file and key."""

from pathlib import Path

import pytest
import yaml
from pydantic import model_validator

from core.config import ConfigError, ConfigModel, RunConfig, load_config, load_yaml_tree, parse_value


class Optim(ConfigModel):
    lr: float
    betas: tuple[float, float] = (0.9, 0.95)


class Trainer(ConfigModel):
    steps: int
    optim: Optim
    tags: dict[str, str] = {}


class Experiment(ConfigModel):
    run: RunConfig
    trainer: Trainer
    name: str = "exp"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base.yaml", "run: {dir: runs/x}\ntrainer:\n  steps: 10\n  optim: {lr: 0.001}\n")


def test_extends_merges_deeply_and_child_wins(tmp_path: Path, base: Path):
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ntrainer:\n  optim: {lr: 0.5}\nname: child\n")
    cfg = load_config(Experiment, child)
    assert cfg.trainer.steps == 10 and cfg.trainer.optim.lr == 0.5 and cfg.name == "child"


def test_set_overrides_are_typed(base: Path):
    cfg = load_config(Experiment, base, ["trainer.optim.lr=3e-4", "trainer.steps=7", "run.overwrite=true",
                                         "trainer.tags.team=data"])
    assert cfg.trainer.optim.lr == pytest.approx(3e-4) and isinstance(cfg.trainer.optim.lr, float)
    assert cfg.trainer.steps == 7 and cfg.run.overwrite is True and cfg.trainer.tags == {"team": "data"}


@pytest.mark.parametrize("text,value", [("3e-4", 3e-4), ("12", 12), ("true", True), ("[1, 2]", [1, 2]),
                                        ("abc", "abc"), ("null", None)])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path, base: Path):
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ntrainer:\n  optim: {lrr: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, child)
    assert str(child.resolve()) in str(err.value) and "trainer.optim.lrr" in str(err.value)
    assert "unknown key" in str(err.value) and "did you mean 'lr'" in str(err.value)


def test_error_in_base_file_names_the_base(tmp_path: Path):
    base = write(tmp_path / "base.yaml", "run: {dir: r}\ntrainer:\n  steps: ten\n  optim: {lr: 1}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: c\n")
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, child)
    assert str(base.resolve()) in str(err.value) and "trainer.steps" in str(err.value)


def test_missing_required_key(tmp_path: Path):
    cfg = write(tmp_path / "c.yaml", "run: {dir: r}\ntrainer: {optim: {lr: 1}}\n")
    with pytest.raises(ConfigError, match=r"key 'trainer.steps': missing required key"):
        load_config(Experiment, cfg)


def test_set_on_unknown_key_is_an_error_with_suggestion(base: Path):
    expected = r"--set trainer.optim.lrate.*unknown key 'trainer.optim.lrate'.*'lr'"
    with pytest.raises(ConfigError, match=expected):
        load_config(Experiment, base, ["trainer.optim.lrate=1"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(Experiment, base, ["trainer.steps.x=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(Experiment, base, ["trainer.steps"])


def test_set_with_wrong_type_names_override(base: Path):
    with pytest.raises(ConfigError, match=r"--set: key 'trainer.steps'"):
        load_config(Experiment, base, ["trainer.steps=many"])


def test_file_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Experiment, tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "trainer: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: unreadable YAML"):
        load_config(Experiment, bad)
    scalar = write(tmp_path / "scalar.yaml", "42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Experiment, scalar)


def test_circular_extends(tmp_path: Path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular 'extends'"):
        load_config(Experiment, tmp_path / "a.yaml")


def test_missing_base(tmp_path: Path):
    write(tmp_path / "a.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError, match="base file not found"):
        load_config(Experiment, tmp_path / "a.yaml")


def test_section_extends_fills_one_section(tmp_path: Path):
    (tmp_path / "optim").mkdir()
    optim = write(tmp_path / "optim" / "adam.yaml", "lr: 0.01\nbetas: [0.8, 0.9]\n")
    cfg_path = write(tmp_path / "c.yaml", "run: {dir: r}\ntrainer:\n  steps: 3\n  optim:\n"
                                          "    extends: optim/adam.yaml\n    lr: 0.02\n")
    cfg = load_config(Experiment, cfg_path)
    assert cfg.trainer.optim.lr == 0.02 and cfg.trainer.optim.betas == (0.8, 0.9)
    write(optim, "lr: 0.01\nbetas: [0.8, 0.9]\nmomentum: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, cfg_path)
    assert str(optim.resolve()) in str(err.value) and "trainer.optim.momentum" in str(err.value)


class Windowed(ConfigModel):
    seq_len: int
    max_seq_len: int

    @model_validator(mode="after")
    def _fits(self) -> "Windowed":
        if self.seq_len > self.max_seq_len:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_seq_len={self.max_seq_len}")
        return self


def test_a_check_across_keys_says_its_message_without_dumping_the_config(tmp_path: Path):
    cfg = write(tmp_path / "w.yaml", "seq_len: 4096\nmax_seq_len: 512\n")
    with pytest.raises(ConfigError) as err:
        load_config(Windowed, cfg)
    assert str(err.value) == f"{cfg}: seq_len=4096 exceeds max_seq_len=512"


# ---------------------------------------------------------------------------------------------
# `--set` reaches every key a YAML file can set
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
# Each shipped config and the config model it is read with (a stage's, a model section's, a cluster profile's).
SHIPPED = {
    "quickstart.yaml": "quickstart",
    "data/fineweb_like.yaml": "data", "data/sample.yaml": "data", "data/mix.yaml": "mix",
    "data/synth_reasoning.yaml": "synth", "data/synth_rejection.yaml": "synth", "data/tokenize.yaml": "tokenize",
    "data/tokenizer.yaml": "tokenizer",
    "model/dense_small.yaml": "model", "model/olmoe_1b_7b.yaml": "model", "model/tiny_moe.yaml": "model",
    "quickstart/data.yaml": "data", "quickstart/midtrain.yaml": "midtrain", "quickstart/mix_midtrain.yaml": "mix",
    "quickstart/mix_pretrain.yaml": "mix", "quickstart/pretrain.yaml": "pretrain", "quickstart/synth.yaml": "synth",
    "quickstart/synth_tokens.yaml": "tokenize", "quickstart/tokenizer.yaml": "tokenizer",
    "quickstart/tokens.yaml": "tokenize",
    "slurm/example_gpu.yaml": "profile", "slurm/local.yaml": "profile", "eval/quick.yaml": "eval",
    "quickstart/eval.yaml": "eval",
}


def config_model(kind: str) -> type[ConfigModel]:
    from atom.cli import load_stage
    from pretrain.model.config import MoEModelConfig
    from slurm.profile import ClusterProfile

    return {"model": MoEModelConfig, "profile": ClusterProfile}.get(kind) or load_stage(kind).config_cls


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """dotted key -> value of every non-section value of a raw config tree."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_override_text(value: object) -> str:
    """How a user writes `value` on the command line: one line of YAML."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()


def test_every_shipped_config_is_checked():
    shipped = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_set_every_key_to_its_value_leaves_the_config_unchanged(name: str):
    """Every key the file sets, and every key of the resolved config (defaults included), can be `--set`."""
    path, model = REPO / "configs" / name, config_model(SHIPPED[name])
    resolved = load_config(model, path).to_dict()
    keys = {**leaves(resolved), **leaves(load_yaml_tree(path, {}))}
    assert keys
    for key, value in keys.items():
        override = f"{key}={as_override_text(value)}"
        assert load_config(model, path, [override]).to_dict() == resolved, override


def test_set_reaches_into_a_free_form_section():
    """midtrain's `model:` holds only changes to the parent's model config (a free-form mapping)."""
    cfg = load_config(config_model("midtrain"), REPO / "configs/quickstart/midtrain.yaml",
                      ["model.rope.scaling=none", "model.moe.aux_loss_weight=0.02"])
    assert cfg.model["rope"] == {"scaling": "none", "factor": 2.0, "original_max_position": 512}
    assert cfg.model["moe"] == {"aux_loss_weight": 0.02}


class Local(ConfigModel):
    kind: str = "local"
    model_dir: str


class Remote(ConfigModel):
    kind: str = "remote"
    url: str


class Filter(ConfigModel):
    enabled: bool = True
    params: dict[str, float] = {}


class Shapes(ConfigModel):
    backend: Local | Remote | None = None
    extra: Optim | None = None
    sources: dict[str, Optim] = {}
    env: dict[str, str] = {}
    mem: str | None = None
    strict: Filter = Filter(params={"threshold": 0.5})


def test_set_through_unions_nullable_sections_and_dotted_mapping_keys(tmp_path: Path):
    cfg_path = write(tmp_path / "s.yaml", "sources:\n  python3.11-doc: {lr: 0.1}\n")
    cfg = load_config(Shapes, cfg_path, ["backend.url=http://h", "extra.lr=2", "sources.python3.11-doc.lr=0.3",
                                         'sources."a.b".lr=0.4', "env.OMP_NUM_THREADS=8", "mem=0",
                                         "strict.enabled=false"])
    assert cfg.backend == Remote(url="http://h") and cfg.extra == Optim(lr=2.0)
    assert cfg.sources == {"python3.11-doc": Optim(lr=0.3), "a.b": Optim(lr=0.4)}
    assert cfg.env == {"OMP_NUM_THREADS": "8"} and cfg.mem == "0"
    assert cfg.strict == Filter(enabled=False, params={"threshold": 0.5})  # the section's own default is kept
    assert load_config(Shapes, cfg_path, ["mem=null"]).mem is None
    with pytest.raises(ConfigError, match=r"unknown key 'backend.uri' \(did you mean 'url'\?\)"):
        load_config(Shapes, cfg_path, ["backend.uri=x"])
    with pytest.raises(ConfigError, match="stray"):
        load_config(Shapes, cfg_path, ['sources."a.lr=1'])


def test_a_quoted_number_stays_text():
    assert parse_value("'1'") == "1" and parse_value('"3e-4"') == "3e-4"


class Entry(ConfigModel):
    name: str
    path: str
    ratio: float = 1.0


class Listed(ConfigModel):
    sources: list[Entry]
    betas: tuple[float, float] = (0.9, 0.95)
    defaults: list[Entry] = [Entry(name="d", path="/d")]


LISTED = "sources:\n  - {name: web, path: /w}\n  - {name: python3.11-doc, path: /p}\n  - {name: '7', path: /s}\n"


def test_set_reaches_list_entries_by_index_and_by_name(tmp_path: Path):
    cfg_path = write(tmp_path / "l.yaml", LISTED)
    cfg = load_config(Listed, cfg_path, ["sources.0.path=/w2", "sources.python3.11-doc.ratio=0.5",
                                         'sources."7".path=/s2', "sources.web.ratio=2", "betas.1=0.99",
                                         "defaults.d.path=/d2"])
    assert [(s.name, s.path, s.ratio) for s in cfg.sources] == [
        ("web", "/w2", 2.0), ("python3.11-doc", "/p", 0.5), ("7", "/s2", 1.0)]
    assert cfg.betas == (0.9, 0.99) and cfg.defaults == [Entry(name="d", path="/d2")]
    with pytest.raises(ConfigError, match=r"sources\.1\.ratio': .*\(got 'x'\)"):  # errors name the entry's key
        load_config(Listed, cfg_path, ["sources.1.ratio=x"])


def test_set_on_a_missing_list_entry_names_the_key_and_what_exists(tmp_path: Path):
    cfg_path = write(tmp_path / "l.yaml", LISTED)
    with pytest.raises(ConfigError, match=r"--set sources\.3\.path: 'sources' has 3 entries \(0-2\), no index 3"):
        load_config(Listed, cfg_path, ["sources.3.path=/x"])
    with pytest.raises(ConfigError, match=r"--set sources\.wbe\.path: .*'wbe'.*names: web, python3\.11-doc, 7"):
        load_config(Listed, cfg_path, ["sources.wbe.path=/x"])
    with pytest.raises(ConfigError, match=r"unknown key 'sources\.0\.pth' \(did you mean 'path'\?\)"):
        load_config(Listed, cfg_path, ["sources.0.pth=/x"])
