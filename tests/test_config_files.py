"""Config files in TOML and YAML: same keys, same validation, errors that name the file.

These only call ``load_config``; no experiment runs.
"""
from __future__ import annotations

import pytest

from manipex.experiments import EXPERIMENTS, ConfigError, load_config
from manipex.experiments.config import read_config

TOML = """\
experiment = "quick"
n = 4
eps = 0.05
lr = 1e-3
methods = ["gradient", "lrp"]
"""

YAML = """\
experiment: quick
n: 4
eps: 0.05
lr: 1e-3          # YAML 1.1 would read this as a string
methods: [gradient, lrp]
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_config_equals_the_toml_config(tmp_path, suffix):
    exp_t, from_toml = load_config(None, _write(tmp_path, "c.toml", TOML), {})
    exp_y, from_yaml = load_config(None, _write(tmp_path, "c" + suffix, YAML), {})
    assert exp_t is exp_y and exp_y.name == "quick"
    assert from_yaml == from_toml
    assert from_yaml.lr == 1e-3 and isinstance(from_yaml.lr, float)
    assert from_yaml.n == 4 and from_yaml.methods == ["gradient", "lrp"]


@pytest.mark.parametrize("text, value", [("5E-5", 5e-5), ("+2.5e+3", 2500.0), ("1e3", 1000.0),
                                         ("1.0e3", 1000.0), (".5e-2", 0.005), ("0.01", 0.01), ("1", 1.0)])
def test_yaml_exponent_floats_are_numbers(tmp_path, text, value):
    _, config = load_config(None, _write(tmp_path, "c.yaml", f"softplus_beta: {text}\n"), {})
    assert config.softplus_beta == pytest.approx(value) and isinstance(config.softplus_beta, float)


def test_yaml_negative_exponent_float_is_read_and_then_refused_by_its_bound(tmp_path):
    with pytest.raises(ConfigError, match=r"'lr' must be > 0, got -2500.0"):
        load_config(None, _write(tmp_path, "c.yaml", "lr: -2.5e+3\n"), {})


def test_yaml_quoted_number_stays_a_string(tmp_path):
    with pytest.raises(ConfigError, match="'lr' must be a number"):
        load_config(None, _write(tmp_path, "c.yaml", 'lr: "1e-3"\n'), {})


def test_yaml_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        load_config(None, _write(tmp_path, "c.yaml", "n: 4\nstepz: 3\n"), {})


def test_yaml_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'n' must be an integer"):
        load_config(None, _write(tmp_path, "c.yaml", "n: four\n"), {})


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = _write(tmp_path, "broken.yaml", "eps: 0.1\nn: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*not valid YAML \(line \d+") as err:
        load_config(None, path, {})
    assert str(path) in str(err.value)


def test_yaml_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"dup\.yaml.*line 2.*duplicate key 'n'"):
        load_config(None, _write(tmp_path, "dup.yaml", "n: 4\nn: 8\n"), {})


def test_yaml_merge_keys_still_work(tmp_path):
    text = "base: &b {n: 4, eps: 0.05}\n"
    # anchors live inside a mapping; the top level must only hold config keys, so check read_config
    table = read_config(_write(tmp_path, "m.yaml", text + "run:\n  <<: *b\n  n: 8\n"))
    assert table["run"] == {"n": 8, "eps": 0.05}


@pytest.mark.parametrize("text, kind", [("- n: 4\n- eps: 0.1\n", "list"), ("just a string\n", "str")])
def test_yaml_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = _write(tmp_path, "top.yaml", text)
    with pytest.raises(ConfigError, match=rf"top\.yaml.*mapping.*got a {kind}"):
        load_config(None, path, {})


def test_empty_yaml_is_an_empty_config(tmp_path):
    assert load_config(None, _write(tmp_path, "e.yaml", "# nothing\n"), {}) == load_config(None, None, {})


def test_yaml_cannot_build_python_objects(tmp_path):
    path = _write(tmp_path, "evil.yaml", "n: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml.*not valid YAML"):
        load_config(None, path, {})


def test_unknown_suffix_is_rejected(tmp_path):
    path = _write(tmp_path, "c.json", '{"n": 4}')
    with pytest.raises(ConfigError, match=r"c\.json.*'\.json'.*\.toml, \.yaml, \.yml"):
        load_config(None, path, {})


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yml.*does not exist"):
        load_config(None, tmp_path / "nope.yml", {})


def test_command_line_overrides_the_yaml_file(tmp_path):
    _, config = load_config(None, _write(tmp_path, "c.yaml", YAML), {"n": 8})
    assert config.n == 8 and config.lr == 1e-3


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_list_prints_a_toml_template_that_reads_back_as_the_defaults(name, tmp_path, capsys):
    from manipex.cli import main

    assert main(["list", name]) == 0
    path = tmp_path / f"{name}.toml"
    path.write_text(capsys.readouterr().out)
    experiment, config = load_config(None, path, {})
    assert experiment.name == name
    assert config == load_config(name, None, {})[1]
    assert main(["list", "no_such_experiment"]) == 2
    assert "no_such_experiment" in capsys.readouterr().err
