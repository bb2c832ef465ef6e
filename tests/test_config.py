from dataclasses import dataclass, field

import pytest

from asr.config import ConfigError, from_dict, load_yaml, save_yaml


@dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.1
    blocks: tuple[int | None, ...] = (4, None)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_nested_and_defaults():
    cfg = from_dict(Outer, {"inner": {"size": 8, "blocks": [1, None, 16]}})
    assert cfg == Outer(inner=Inner(size=8, blocks=(1, None, 16)))
    assert from_dict(Inner, {"rate": 1}).rate == 1.0


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("name: a\ninner:\n  sise: 3\n")
    with pytest.raises(ConfigError, match=r"exp.yaml.*unknown key 'sise'"):
        load_yaml(Outer, p)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"inner.size.*integer"):
        from_dict(Outer, {"inner": {"size": "big"}}, source="f.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(Outer, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(Outer, bad)


def test_round_trip(tmp_path):
    cfg = Outer(name="y", inner=Inner(blocks=(2, None)))
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(Outer, tmp_path / "c.yaml") == cfg
