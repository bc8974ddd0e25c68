"""Tests of the trainer's YAML configs: inheritance, overrides and key checking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
)

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "examples" / "configs"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_default_config_file_matches_schema_defaults():
    config = load_config(CONFIGS_DIR / "train_tracker.yaml")

    assert config.enable_cfg is False
    assert config.cfg.dropout_prob == 0.0
    assert config.model.size == "demo"
    assert config.data.dir == "data/episodes"


def test_cfg_config_inherits_defaults_and_turns_cfg_on():
    base = load_config(CONFIGS_DIR / "train_tracker.yaml")
    cfg = load_config(CONFIGS_DIR / "train_tracker_cfg.yaml")

    assert cfg.enable_cfg is True
    assert cfg.cfg.dropout_prob == 0.1
    assert cfg.cfg.guidance_scale == 2.0
    assert cfg.train == base.train
    assert cfg.data == base.data
    assert cfg.output_dir != base.output_dir


def test_base_config_chain_merges_nested_keys(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"train": {"max_steps": 7, "batch_size": 3}, "seed": 5})
    write_yaml(tmp_path / "b.yaml", {"base_config": "a.yaml", "train": {"batch_size": 9}})
    sub = tmp_path / "sub"
    sub.mkdir()
    write_yaml(sub / "c.yaml", {"base_config": "../b.yaml", "seed": 11})

    config = load_config(sub / "c.yaml")

    assert config.train.max_steps == 7
    assert config.train.batch_size == 9
    assert config.seed == 11


def test_base_config_cycle_raises(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base_config": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base_config": "a.yaml"})

    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_config_names_file(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base_config": "absent.yaml"})

    with pytest.raises(ConfigError, match=re.escape("absent.yaml")):
        load_config(tmp_path / "a.yaml")


def test_overrides_parse_yaml_values():
    config = load_config(
        None,
        [
            "train.max_steps=12",
            "train.learning_rate=1e-4",
            "eval.at_end=false",
            "cfg.guidance_sweep=[1, 4]",
            "data.num_points=null",
            "model.overrides.hidden_size=64",
        ],
    )

    assert config.train.max_steps == 12
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.eval.at_end is False
    assert config.cfg.guidance_sweep == [1, 4]
    assert config.data.num_points is None
    assert config.model.overrides == {"hidden_size": 64}


def test_later_override_wins():
    config = load_config(None, ["seed=1", "seed=2"])

    assert config.seed == 2


@pytest.mark.parametrize(
    ("override", "unknown", "closest"),
    [
        ("train.learnig_rate=1", "train.learnig_rate", "train.learning_rate"),
        ("learning_rate=1", "learning_rate", "train.learning_rate"),
        ("trian.max_steps=1", "trian", "train"),
        ("eval.every_step=3", "eval.every_step", "eval.every_steps"),
        ("data.generate.trian=3", "data.generate.trian", "data.generate.train"),
    ],
)
def test_unknown_override_names_key_and_closest(override, unknown, closest):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])

    message = str(error.value)
    assert repr(unknown) in message
    assert f"Did you mean {closest!r}" in message


def test_unknown_key_in_file_reported(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"train": {"max_step": 3}})

    with pytest.raises(ConfigError) as error:
        load_config(path)

    message = str(error.value)
    assert "'train.max_step'" in message
    assert "Did you mean 'train.max_steps'" in message
    assert str(path) in message


def test_unknown_key_inherited_from_base_is_reported(tmp_path):
    write_yaml(tmp_path / "base.yaml", {"checkpoint": {"keep_lats": 2}})
    path = write_yaml(tmp_path / "child.yaml", {"base_config": "base.yaml"})

    with pytest.raises(ConfigError, match=re.escape("Did you mean 'checkpoint.keep_last'")):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.max_steps=1.5", "must be int"),
        ("train.max_steps=0", "at least 1"),
        ("enable_cfg=maybe", "must be bool"),
        ("train.mixed_precision=fp8", "mixed_precision"),
        ("train.unfreeze_after=2", "unfreeze_after"),
        ("enable_cfg=true", "dropout_prob"),
        ("cfg.dropout_prob=0.1", "enable_cfg=true"),
        ("noequals", "key=value"),
        ("base_config=x.yaml", "--config"),
    ],
)
def test_invalid_value_raises_with_reason(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, [override])


def test_float_field_accepts_yaml_exponent_string(tmp_path):
    # PyYAML reads 3e-4 (no dot) as a string.
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  learning_rate: 3e-4\n", encoding="utf-8")

    assert load_config(path).train.learning_rate == pytest.approx(3e-4)


def test_non_mapping_file_raises(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_saved_config_loads_back_identical(tmp_path):
    config = load_config(CONFIGS_DIR / "train_tracker_cfg.yaml", ["train.max_steps=3"])

    path = save_config(config, tmp_path / "resolved.yaml")

    assert load_config(path) == config
    assert "base_config" not in path.read_text(encoding="utf-8")


@settings(max_examples=25, deadline=None)
@given(
    max_steps=st.integers(1, 10**6),
    learning_rate=st.floats(1e-8, 1.0, allow_nan=False),
    every_steps=st.integers(0, 1000),
)
def test_config_round_trips_through_dict(max_steps, learning_rate, every_steps):
    config = load_config(
        None,
        [
            f"train.max_steps={max_steps}",
            f"train.learning_rate={learning_rate!r}",
            f"eval.every_steps={every_steps}",
        ],
    )

    rebuilt = load_config(None, _flatten(config_to_dict(config)))

    assert rebuilt == config
    assert isinstance(rebuilt, TrainConfig)


def _flatten(data: dict, prefix: str = "") -> list[str]:
    overrides = []
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "overrides":
            overrides.extend(_flatten(value, f"{prefix}{key}."))
        else:
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            overrides.append(f"{prefix}{key}={text.removesuffix('...').strip()}")
    return overrides
