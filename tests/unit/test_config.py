"""Config: RecBole keys and defaults, all problems at once, every shipped config valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlconnect.engine.config import MODELS, load_config, parse_interval, parse_overrides
from mlconnect.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_recbole_defaults_per_model() -> None:
    sas = load_config(None, {"model": "sasrec"})
    assert sas["model"] == "SASRec"
    assert (sas["hidden_dropout_prob"], sas["inner_size"], sas["MAX_ITEM_LIST_LENGTH"]) == (0.5, 256, 50)
    gru = load_config(None, {"model": "GRU4Rec"})
    assert (gru["embedding_size"], gru["hidden_size"], gru["dropout_prob"]) == (64, 128, 0.3)
    bert = load_config(None, {"model": "BERT4Rec"})
    assert (bert["mask_ratio"], bert["hidden_dropout_prob"]) == (0.2, 0.2)
    assert bert["eval_args"]["split"] == {"LS": "valid_and_test"}


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: SASRec\nhiden_size: 64\nlearning_rate: -1\nn_heads: 3\nmetrics: [NDCG, Foo]\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    problems = err.value.problems
    assert any("unknown key 'hiden_size'" in p and "hidden_size" in p for p in problems)
    assert any("learning_rate" in p for p in problems)
    assert any("multiple of n_heads" in p for p in problems)
    assert any("'Foo'" in p for p in problems)
    assert str(cfg) in str(err.value)


def test_unsupported_protocol_and_model() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"model": "NARM", "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO"}})
    text = str(err.value)
    assert "NARM" in text and "LS" in text and "TO" in text


def test_recbole_only_keys_are_accepted() -> None:
    cfg = load_config(None, {"gpu_id": "0", "show_progress": False, "train_neg_sample_args": None})
    assert "gpu_id" not in cfg


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("model: SASRec\nepochs: [1\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(cfg)


def test_overrides_are_yaml_values() -> None:
    assert parse_overrides(["epochs=5", "topk=[10, 20]", "mask_history=true"]) == {
        "epochs": 5, "topk": [10, 20], "mask_history": True}
    with pytest.raises(ConfigError):
        parse_overrides(["epochs"])


def test_intervals() -> None:
    assert parse_interval("[3,inf)") == (3.0, float("inf"), True, False)
    assert parse_interval("(0, 10]") == (0.0, 10.0, False, True)
    with pytest.raises(ValueError):
        parse_interval("3..5")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg["model"] in MODELS


def test_configs_folder_is_not_empty() -> None:
    assert {p.name for p in CONFIGS} >= {"baseline.yaml", "gru4rec.yaml", "bert4rec.yaml"}
    assert load_config(CONFIGS[[p.name for p in CONFIGS].index("baseline.yaml")])["model"] == "SASRec"


@pytest.mark.parametrize(("over", "needle"), [
    ({"topk": []}, "topk must be"),  # used to pass, train an epoch, then fail in evaluation
    ({"valid_metric": "NDCG@20"}, "is not computed"),  # used to be a KeyError traceback after epoch 1
    ({"metrics": ["Recall"], "valid_metric": "NDCG@10"}, "is not computed"),
])
def test_valid_metric_and_topk_checked_before_training(over: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, over)
    assert any(needle in p for p in err.value.problems)
    assert load_config(None, {"topk": [5, 20], "valid_metric": "ndcg@20"})["topk"] == [5, 20]


def test_exponent_floats_load_as_recbole_reads_them(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 as a string; RecBole (and so every RecBole config) reads a float
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1e-3\nweight_decay: 5E-5\n")
    loaded = load_config(cfg, parse_overrides(["layer_norm_eps=1e-12"]))
    assert (loaded["learning_rate"], loaded["weight_decay"], loaded["layer_norm_eps"]) == (1e-3, 5e-5, 1e-12)
    assert parse_overrides(["seed=42", "dataset=1e5x"]) == {"seed": 42, "dataset": "1e5x"}


def test_a_misspelt_eval_args_key_is_an_error() -> None:
    # {modee: uni100} used to train and evaluate with full ranking, saying nothing
    with pytest.raises(ConfigError) as err:
        load_config(None, {"eval_args": {"modee": "uni100"}})
    assert any("eval_args: unknown key(s) modee" in p for p in err.value.problems)


@pytest.mark.parametrize("clip", [{"max_norm": "abc"}, {"max_norm": 5, "norm_typ": 1}, {"max_norm": -1}])
def test_clip_grad_norm_checked_before_training(clip: dict) -> None:
    # {max_norm: abc} was a ValueError traceback at the first step; norm_typ was silently ignored
    with pytest.raises(ConfigError, match="clip_grad_norm must be"):
        load_config(None, {"clip_grad_norm": clip})
    assert load_config(None, {"clip_grad_norm": {"max_norm": 5.0, "norm_type": 2}})["clip_grad_norm"]["max_norm"] == 5


@pytest.mark.parametrize(("over", "needle"), [
    ({"compile": "abc"}, "compile must be true or false"),  # a string was truthy: it compiled
    ({"mask_history": "maybe"}, "mask_history must be true or false"),  # ... and masked the history
    ({"save_checkpoints": "abc"}, "save_checkpoints must be true or false"),
    ({"model": "BERT4Rec", "ft_ratio": "abc"}, "ft_ratio must be"),  # was a TypeError traceback mid-epoch
    ({"model": "BERT4Rec", "ft_ratio": 2}, "ft_ratio must be"),
])
def test_switches_and_ratios_are_typed(over: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, over)
    assert any(needle in p for p in err.value.problems)
    ok = load_config(None, parse_overrides(["compile=false", "valid_metric_bigger=no"]))
    assert ok["valid_metric_bigger"] is False


@pytest.mark.parametrize("key", ["initializer_range", "layer_norm_eps"])
def test_transformer_numbers_are_typed(key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} must be a number > 0"):  # was a TypeError in the model
        load_config(None, parse_overrides([f"{key}=abc"]))
    assert load_config(None, parse_overrides([f"{key}=1e-6"]))[key] == 1e-6
