"""space.yaml parsing: Optuna's distributions in YAML, one error line naming the bad key."""

from __future__ import annotations

import optuna
import pytest

from mlconnect.sweeps.client import start_args
from mlconnect.sweeps.space import SpaceError, check_against_config, load_space, parse_space, suggest, to_dict
from mlconnect.sweeps.study import check_name, trial_experiment

GOOD = {"learning_rate": {"float": ["1e-4", 1e-2], "log": True}, "n_layers": {"int": [1, 3]},
        "loss_type": {"choice": ["CE", "BPR"]}, "hidden_dropout_prob": {"float": [0.1, 0.5], "step": 0.2}}


def test_parses_the_three_kinds_and_round_trips():
    space = parse_space(GOOD)
    by = {p.name: p for p in space}
    assert by["learning_rate"].low == 1e-4 and by["learning_rate"].log  # "1e-4" is a YAML string
    assert by["n_layers"].kind == "int" and (by["n_layers"].low, by["n_layers"].high) == (1, 3)
    assert by["loss_type"].choices == ("CE", "BPR")
    assert by["hidden_dropout_prob"].grid() == [0.1, 0.3, 0.5]
    assert by["n_layers"].grid() == [1, 2, 3]
    assert parse_space(to_dict(space)) == space


@pytest.mark.parametrize("key,spec,words", [
    ("lr", {"float": [0.1]}, "needs [low, high]"),
    ("lr", {"float": [0.1, 0.01]}, "must be below high"),
    ("lr", {"float": [0, 1], "log": True}, "log: true needs low > 0"),
    ("lr", {"float": ["a", 1]}, "not a number"),
    ("lr", {"floatt": [0, 1]}, "unknown: floatt"),
    ("lr", {"float": [0, 1], "int": [0, 1]}, "exactly one of"),
    ("n_layers", {"int": [1.5, 3]}, "not an integer"),
    ("loss_type", {"choice": []}, "non-empty list"),
    ("loss_type", "CE", "expected a mapping"),
])
def test_a_bad_entry_is_one_line_naming_the_key(key, spec, words):
    with pytest.raises(SpaceError) as e:
        parse_space({**GOOD, key: spec}, "space.yaml")
    msg = str(e.value)
    assert msg.startswith(f"space.yaml: {key}: ") and words in msg and "\n" not in msg


def test_load_space_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="file not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {float: [1, 2]\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n")
    with pytest.raises(SpaceError, match="non-empty mapping"):
        load_space(lst)


def test_keys_and_values_the_engine_refuses_are_named():
    with pytest.raises(SpaceError, match=r"space: learnig_rate: .*unknown key 'learnig_rate'.*learning_rate"):
        check_against_config(parse_space({"learnig_rate": {"float": [0.1, 0.2]}}), None, {})
    with pytest.raises(SpaceError, match=r"space: hidden_dropout_prob: 1.5 is refused"):
        check_against_config(parse_space({"hidden_dropout_prob": {"float": [0.1, 1.5]}}), None, {})
    check_against_config(parse_space(GOOD), None, {})  # the good space passes


def test_grid_needs_discrete_values():
    with pytest.raises(SpaceError, match="grid sampler needs discrete values"):
        parse_space({"lr": {"float": [0.1, 0.2]}})[0].grid()


def test_suggest_uses_optuna_distributions():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = parse_space(GOOD)
    for _ in range(5):
        t = study.ask()
        p = suggest(t, space)
        assert 1e-4 <= p["learning_rate"] <= 1e-2 and p["n_layers"] in (1, 2, 3)
        assert p["loss_type"] in ("CE", "BPR") and round(p["hidden_dropout_prob"], 6) in (0.1, 0.3, 0.5)
        assert isinstance(t.distributions["learning_rate"], optuna.distributions.FloatDistribution)
        assert t.distributions["learning_rate"].log


def test_names_and_agent_args():
    assert trial_experiment("s", 7) == "s-t007" and trial_experiment("s", 12, 2021) == "s-t012-s2021"
    with pytest.raises(Exception, match="invalid sweep name"):
        check_name("../x")
    args = start_args(name="s", config="c.yaml", space="sp.yaml", trials=6, parallel=2, seeds="1,2",
                      sampler="tpe", prune=False, gpus=None, sets=["epochs=2"])
    assert args == ["--name", "s", "--space", "sp.yaml", "--trials", "6", "--parallel", "2", "--sampler", "tpe",
                    "--config", "c.yaml", "--seeds", "1,2", "--no-prune", "--set", "epochs=2"]


def test_choice_of_exponent_floats_loads_floats(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("learning_rate: {choice: [1e-3, 2e-3]}\n")
    (p,) = load_space(f)
    assert p.choices == (1e-3, 2e-3)
    check_against_config([p], None, {})  # a string '1e-3' was refused by the engine
