"""RecBole-compatible configuration: RecBole's keys and defaults, typed and validated.

A config is built from, in order: the engine's defaults, the model's defaults (RecBole's
``model/<Model>.yaml``), the YAML file, then overrides (``--set key=value`` and CLI flags).
Every problem is collected and reported at once: a config with three mistakes gets three lines.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlconnect.errors import ConfigError
from mlconnect.yamlload import load_yaml

MODELS = ("SASRec", "GRU4Rec", "BERT4Rec")

# Engine-wide defaults. Keys and values follow RecBole 1.2.1 (properties/overall.yaml and
# dataset.yaml) unless marked "mlconnect": those are the engine's own additions.
DEFAULTS: dict[str, Any] = {
    "model": "SASRec",
    "dataset": "ml-100k",
    "data_path": "dataset/",
    # --- data files (RecBole dataset keys)
    "field_separator": "\t",
    "seq_separator": " ",
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "RATING_FIELD": "rating",
    "TIME_FIELD": "timestamp",
    "load_col": None,  # None: user, item and time columns of .inter, every column of .item/.user
    "rm_dup_inter": None,  # None | first | last
    "val_interval": None,  # {field: "[low,high)"}
    "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)",
    "MAX_ITEM_LIST_LENGTH": 50,
    "normalize_all": True,  # RecBole min-max normalises float fields; only the time order depends on it
    "normalize_field": None,
    # --- evaluation (RecBole's protocol for sequential models)
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "metrics": ["Recall", "MRR", "NDCG", "Hit", "Precision"],
    "topk": [10],
    "valid_metric": "MRR@10",
    "valid_metric_bigger": True,
    "eval_batch_size": 4096,
    "mask_history": False,  # mlconnect: True masks items already in the user's history
    # --- training
    "epochs": 300,
    "train_batch_size": 2048,  # target positions (interactions) per batch, as in RecBole
    "learner": "adam",
    "learning_rate": 0.001,
    "weight_decay": 0.0,
    "eval_step": 1,
    "stopping_step": 10,
    "clip_grad_norm": None,  # None | {max_norm: 5.0, norm_type: 2}
    "seed": 2020,
    "reproducibility": True,
    "device": "auto",  # mlconnect: auto | cpu | cuda | cuda:N | mps
    "enable_amp": "auto",  # RecBole key; auto = bf16 autocast on CUDA and MPS
    "compile": False,  # mlconnect: torch.compile the model
    "sampled_negatives": 0,  # mlconnect: 0 = CE over the full catalog; N = sampled softmax, N shared negatives
    # (with loss_type gBCE: N negatives per position, gSASRec's k)
    "gbce_t": 0.75,  # mlconnect: gSASRec's calibration t in [0, 1] for loss_type gBCE (0 = plain BCE)
    "loss_chunk_size": None,  # mlconnect: items per chunk of full-catalog CE (None = chosen from batch and catalog)
    "eval_chunk_size": None,  # mlconnect: items per chunk of full-ranking evaluation (None = chosen likewise)
    "sparse_item_grad": "auto",  # mlconnect: row-sparse item-table updates (auto: CPU, sampled loss, 50k+ items)
    "window_stride": None,  # mlconnect: sliding-window stride over long histories (None = MAX_ITEM_LIST_LENGTH)
    "ema_decay": None,  # mlconnect: evaluate and serve an exponential moving average of the weights
    "num_threads": None,  # mlconnect: torch intra-op threads on CPU (None = torch's default)
    "progress_interval_s": 5.0,  # mlconnect: how often progress.json is rewritten during an epoch
    "log_interval": 50,  # mlconnect: train/loss to TensorBoard every N steps
    "save_checkpoints": True,
    "mlflow_tracking_uri": None,  # mlconnect: log params/metrics to MLflow (extra `mlflow`)
    "mlflow_experiment": None,
}

MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "SASRec": {
        "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE",
    },
    "GRU4Rec": {
        "embedding_size": 64, "hidden_size": 128, "num_layers": 1, "dropout_prob": 0.3, "loss_type": "CE",
    },
    "BERT4Rec": {
        "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
        "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02, "mask_ratio": 0.2, "ft_ratio": 0.5,
        "loss_type": "CE",
    },
}

# RecBole keys that have no effect here (they configure RecBole's own machinery); accepted so an
# existing RecBole config loads unchanged.
ACCEPTED_IGNORED = {
    "gpu_id", "use_gpu", "state", "show_progress", "save_dataset", "dataset_save_path", "save_dataloaders",
    "dataloaders_save_path", "log_wandb", "wandb_project", "checkpoint_dir", "train_neg_sample_args",
    "repeatable", "loss_decimal_place", "metric_decimal_place", "require_pow", "enable_scaler",
    "worker", "shuffle", "single_spec", "local_rank", "world_size", "ip", "port", "nproc", "offset",
    "transform", "NEG_PREFIX", "LABEL_FIELD", "threshold", "unused_col", "unload_col",
    "additional_feat_suffix", "numerical_features", "discretization",
    "filter_inter_by_user_or_item", "preload_weight", "alias_of_user_id", "alias_of_item_id",
    "alias_of_entity_id", "alias_of_relation_id", "ITEM_LIST_LENGTH_FIELD", "LIST_SUFFIX",
    "POSITION_FIELD", "HEAD_ENTITY_ID_FIELD", "TAIL_ENTITY_ID_FIELD", "RELATION_ID_FIELD",
    "ENTITY_ID_FIELD", "benchmark_filename", "seq_len", "selected_features", "pooling_mode",
    "train_stage", "pre_model_path", "hidden_act_ffn",
}

_INTERVAL = re.compile(r"^\s*[\[(]\s*(-?[\d.eE+-]+|-?inf)\s*,\s*(-?[\d.eE+-]+|-?inf)\s*[\])]\s*$")
_LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop")
_ACTS = ("gelu", "relu", "swish", "silu", "tanh", "sigmoid")


def parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """RecBole's interval syntax ``[3,inf)`` -> (low, high, low_inclusive, high_inclusive)."""
    m = _INTERVAL.match(str(text))
    if not m:
        raise ValueError(f"not an interval like '[3,inf)': {text!r}")
    low, high = float(m.group(1)), float(m.group(2))
    s = str(text).strip()
    return low, high, s[0] == "[", s[-1] == "]"


class Config(Mapping[str, Any]):
    """A validated, fully resolved config. Read it like a dict: ``cfg["hidden_size"]``."""

    def __init__(self, values: dict[str, Any], source: str = "config") -> None:
        self._values = values
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self._values, sort_keys=False, allow_unicode=True)

    @property
    def max_len(self) -> int:
        return int(self._values["MAX_ITEM_LIST_LENGTH"])

    @property
    def dataset_dir(self) -> Path:
        return Path(self._values["data_path"]) / self._values["dataset"]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=5", "topk=[10,20]"]`` -> ``{"epochs": 5, "topk": [10, 20]}`` (values are YAML)."""
    out: dict[str, Any] = {}
    bad = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            bad.append(f"--set {pair!r} is not key=value")
            continue
        try:
            out[key.strip()] = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    if bad:
        raise ConfigError(bad, source="command line", hint="write each override as --set key=value")
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; a parse error names the file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found: {p}"], source=str(p),
                          hint="check the path (configs/ holds the shipped configs)") from None
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise ConfigError([f"not valid YAML ({where}): {getattr(exc, 'problem', exc)}"], source=str(p),
                          hint=f"fix the YAML at {where}") from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of key: value"], source=str(p),
                          hint="write the config as `key: value` lines (see configs/)")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the model's defaults, then the file, then overrides; validated as a whole."""
    user: dict[str, Any] = {}
    source = "config"
    if path is not None:
        user.update(read_config_file(path))
        source = str(path)
    user.update({k: v for k, v in (overrides or {}).items() if v is not None or k in user})
    problems: list[str] = []
    model = _canonical_model(user.get("model", DEFAULTS["model"]), problems)
    values = dict(DEFAULTS)
    values.update(MODEL_DEFAULTS.get(model, {}))
    known = set(DEFAULTS) | set().union(*MODEL_DEFAULTS.values()) | ACCEPTED_IGNORED
    for key, value in user.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        if key in ACCEPTED_IGNORED:
            continue
        values[key] = value
    values["model"] = model
    _validate(values, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return Config(values, source=source)


def _canonical_model(name: Any, problems: list[str]) -> str:
    for m in MODELS:
        if str(name).lower() == m.lower():
            return m
    problems.append(f"model {name!r} is not one of {', '.join(MODELS)}")
    return "SASRec"


def _validate(v: dict[str, Any], problems: list[str]) -> None:
    def positive_int(key: str, allow_zero: bool = False) -> None:
        x = v.get(key)
        if x is None or isinstance(x, bool) or not isinstance(x, int) or x < (0 if allow_zero else 1):
            problems.append(f"{key} must be an integer {'>= 0' if allow_zero else '> 0'}, got {x!r}")

    def prob(key: str) -> None:
        x = v.get(key)
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not 0.0 <= x < 1.0:
            problems.append(f"{key} must be a number in [0, 1), got {x!r}")

    for key in ("epochs", "train_batch_size", "eval_batch_size", "eval_step", "MAX_ITEM_LIST_LENGTH",
                "log_interval"):
        positive_int(key)
    for key in ("stopping_step", "sampled_negatives"):
        positive_int(key, allow_zero=True)
    for key in ("loss_chunk_size", "eval_chunk_size", "window_stride", "num_threads"):
        if v.get(key) is not None:
            positive_int(key)
    for key in ("mask_history", "valid_metric_bigger", "reproducibility", "normalize_all", "save_checkpoints",
                "compile"):  # any string was truthy: `compile=abc` compiled, `mask_history=maybe` masked
        if not isinstance(v.get(key), bool):
            problems.append(f"{key} must be true or false, got {v.get(key)!r}")
    if v.get("sparse_item_grad") not in ("auto", True, False):
        problems.append(f"sparse_item_grad must be auto, true or false, got {v.get('sparse_item_grad')!r}")
    if type(v.get("seed")) is not int:
        problems.append(f"seed must be an integer, got {v.get('seed')!r}")
    for key in ("learning_rate", "weight_decay", "progress_interval_s"):
        x = v.get(key)
        if not isinstance(x, (int, float)) or isinstance(x, bool) or x < 0:
            problems.append(f"{key} must be a number >= 0, got {x!r}")
    ema = v.get("ema_decay")
    if ema is not None and (not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0.0 < ema < 1.0):
        problems.append(f"ema_decay must be null or a number in (0, 1), got {ema!r}")
    if str(v.get("learner", "")).lower() not in _LEARNERS:
        problems.append(f"learner must be one of {', '.join(_LEARNERS)}, got {v.get('learner')!r}")
    else:
        v["learner"] = str(v["learner"]).lower()
    if v.get("rm_dup_inter") not in (None, "first", "last"):
        problems.append(f"rm_dup_inter must be first, last or null, got {v.get('rm_dup_inter')!r}")
    for key in ("user_inter_num_interval", "item_inter_num_interval"):
        try:
            parse_interval(v[key])
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if v.get("val_interval") is not None:
        if not isinstance(v["val_interval"], dict):
            problems.append("val_interval must map a field to an interval, e.g. {rating: '[3,inf)'}")
        else:
            for field, iv in v["val_interval"].items():
                for one in iv if isinstance(iv, list) else [iv]:
                    try:
                        parse_interval(one)
                    except ValueError as exc:
                        problems.append(f"val_interval.{field}: {exc}")
    if v.get("load_col") is not None and not isinstance(v["load_col"], dict):
        problems.append("load_col must map a file suffix (inter, item, user) to a list of fields")
    _validate_eval(v, problems)
    _validate_model(v, problems)
    dev = str(v.get("device"))
    if not (dev in ("auto", "cpu", "mps", "cuda") or re.fullmatch(r"cuda:\d+", dev)):
        problems.append(f"device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
    if v.get("enable_amp") not in ("auto", True, False):
        problems.append(f"enable_amp must be auto, true or false, got {v.get('enable_amp')!r}")
    cg = v.get("clip_grad_norm")
    if cg is not None and not (isinstance(cg, dict) and "max_norm" in cg and set(cg) <= {"max_norm", "norm_type"}
                               and all(type(x) in (int, float) and x > 0 for x in cg.values())):  # was a traceback
        problems.append(f"clip_grad_norm must be null or {{max_norm: 5.0, norm_type: 2}} (numbers > 0), got {cg!r}")


def _validate_eval(v: dict[str, Any], problems: list[str]) -> None:
    from mlconnect.engine.metrics import METRICS  # the metric names live with the metrics

    ea = v.get("eval_args") or {}
    if not isinstance(ea, dict):
        problems.append("eval_args must be a mapping")
        return
    merged = {**DEFAULTS["eval_args"], **ea}
    if extra := sorted(set(merged) - set(DEFAULTS["eval_args"])):  # a typo here was silently ignored
        problems.append(f"eval_args: unknown key(s) {', '.join(map(str, extra))} (known: split, order, group_by, mode)")
    split = merged.get("split")
    if split != {"LS": "valid_and_test"}:
        problems.append(f"eval_args.split {split!r} is not supported: sequential models use {{LS: valid_and_test}}")
    if merged.get("order") != "TO":
        problems.append(f"eval_args.order {merged.get('order')!r} is not supported: use TO (time order)")
    _validate_eval_mode(merged.get("mode"), problems)
    if merged.get("group_by", "user") != "user":
        problems.append("eval_args.group_by must be user")
    v["eval_args"] = merged
    metrics = v.get("metrics")
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        problems.append("metrics must be a list such as [Recall, NDCG]")
        metrics = []
    for m in metrics:
        if str(m).lower() not in METRICS:
            problems.append(f"metric {m!r} is not one of {', '.join(METRICS)}")
    v["metrics"] = metrics
    topk = v.get("topk")
    if isinstance(topk, int):
        topk = [topk]
    if not isinstance(topk, list) or not topk or not all(isinstance(k, int) and k > 0 for k in topk):
        problems.append(f"topk must be a list of positive integers, got {v.get('topk')!r}")
        topk = [10]
    v["topk"] = topk
    vm = str(v.get("valid_metric", ""))
    name, _, k = vm.lower().partition("@")
    if name not in METRICS or not k.isdigit():
        problems.append(f"valid_metric {vm!r} must look like NDCG@10 with a metric from {', '.join(METRICS)}")
    elif metrics and topk and (name not in {str(m).lower() for m in metrics} or int(k) not in topk):
        problems.append(f"valid_metric {vm!r} is not computed: metrics are {metrics} and topk {topk}")


def _validate_eval_mode(mode: Any, problems: list[str]) -> None:
    """RecBole's ``mode: full | uniN | popN`` or ``mode: {valid: ..., test: ...}``."""
    from mlconnect.engine.eval_sampling import parse_mode

    if isinstance(mode, dict):
        extra = sorted(set(mode) - {"valid", "test"})
        if extra or not mode:
            problems.append(f"eval_args.mode as a mapping takes the keys valid and test, got {sorted(mode)!r}")
        modes = list(mode.values())
    else:
        modes = [mode]
    for m in modes:
        try:
            parse_mode(m)
        except ValueError as exc:
            problems.append(str(exc))


def _validate_model(v: dict[str, Any], problems: list[str]) -> None:
    model = v["model"]
    if v.get("loss_type") not in ("CE", "BPR", "gBCE"):
        problems.append(f"loss_type must be CE, BPR or gBCE, got {v.get('loss_type')!r}")
    if model == "BERT4Rec" and v.get("loss_type") in ("BPR", "gBCE"):
        problems.append("BERT4Rec trains with loss_type CE")
    if v.get("loss_type") == "gBCE" and v.get("sampled_negatives") == 0:
        problems.append("loss_type gBCE needs sampled_negatives > 0 (negatives per position; gSASRec uses 256)")
    t = v.get("gbce_t")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
        problems.append(f"gbce_t must be a number in [0, 1], got {t!r}")
    ints = ["hidden_size"] + (["n_layers", "n_heads", "inner_size"] if model != "GRU4Rec"
                              else ["embedding_size", "num_layers"])
    for key in ints:
        x = v.get(key)
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            problems.append(f"{key} must be a positive integer, got {x!r}")
    probs = ["hidden_dropout_prob", "attn_dropout_prob"] if model != "GRU4Rec" else ["dropout_prob"]
    probs += ["mask_ratio", "ft_ratio"] if model == "BERT4Rec" else []
    for key in probs:
        x = v.get(key)
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not 0.0 <= x < 1.0:
            problems.append(f"{key} must be a number in [0, 1), got {x!r}")
    if model != "GRU4Rec":
        for key in ("initializer_range", "layer_norm_eps"):  # a string was a TypeError traceback
            if type(v.get(key)) not in (int, float) or not v[key] > 0:
                problems.append(f"{key} must be a number > 0, got {v.get(key)!r}")
        if str(v.get("hidden_act")).lower() not in _ACTS:
            problems.append(f"hidden_act must be one of {', '.join(_ACTS)}, got {v.get('hidden_act')!r}")
        h, n = v.get("hidden_size"), v.get("n_heads")
        if isinstance(h, int) and isinstance(n, int) and n > 0 and h % n:
            problems.append(f"hidden_size ({h}) must be a multiple of n_heads ({n})")
