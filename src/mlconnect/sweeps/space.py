"""``space.yaml``: Optuna's distributions written as YAML, checked key by key.

```yaml
learning_rate: {float: [1e-4, 1e-2], log: true}
n_layers: {int: [1, 3]}
loss_type: {choice: [CE, BPR]}
```

A bad entry is one error line naming the key. Every key must be a config key the engine knows:
the lowest and highest value of each range are run through ``load_config`` with the base config,
so a typo (``learnig_rate``) or a value the engine rejects fails before any trial starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlconnect.errors import ConfigError, MlconnectError
from mlconnect.yamlload import load_yaml

KINDS = ("float", "int", "choice")


class SpaceError(MlconnectError):
    """A space.yaml entry Optuna cannot sample, or a value the engine would refuse."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}",
                         "write each key as {float: [lo, hi], log: true}, {int: [lo, hi]} or {choice: [a, b]}")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # float | int | choice
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    def extremes(self) -> list[Any]:
        """The values a config must accept for the whole range to be valid."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler: choices, every int, or floats on ``step``."""
        if self.kind == "choice":
            return list(self.choices)
        step = self.step or (1 if self.kind == "int" else None)
        if step is None:
            raise SpaceError("space", self.name, "the grid sampler needs discrete values: add step: S "
                             "or use {choice: [...]}")
        n = int(round((self.high - self.low) / step))
        values = [self.low + i * step for i in range(n + 1)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]


def _number(value: Any, kind: str) -> float | int:
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    if kind == "int":
        if float(value) != int(value):
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    return float(value)


def parse_param(name: str, spec: Any, source: str = "space") -> Param:
    if not isinstance(spec, dict):
        raise SpaceError(source, name, f"expected a mapping such as {{float: [lo, hi]}}, got {spec!r}")
    kinds = [k for k in KINDS if k in spec]
    unknown = sorted(set(spec) - set(KINDS) - {"log", "step"})
    if len(kinds) != 1 or unknown:
        extra = f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""
        raise SpaceError(source, name, f"needs exactly one of float, int, choice{extra}")
    kind = kinds[0]
    values = spec[kind]
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise SpaceError(source, name, "choice needs a non-empty list")
        if "log" in spec or "step" in spec:
            raise SpaceError(source, name, "log and step apply to float and int, not choice")
        return Param(name, kind, choices=tuple(values))
    if not isinstance(values, list) or len(values) != 2:
        raise SpaceError(source, name, f"{kind} needs [low, high], got {values!r}")
    try:
        low, high = (_number(v, kind) for v in values)
        step = _number(spec["step"], kind) if spec.get("step") is not None else None
    except ValueError as exc:
        raise SpaceError(source, name, str(exc)) from None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(source, name, f"log must be true or false, got {log!r}")
    if not low < high:
        raise SpaceError(source, name, f"low {low} must be below high {high}")
    if log and low <= 0:
        raise SpaceError(source, name, f"log: true needs low > 0, got {low}")
    if log and step:
        raise SpaceError(source, name, "log and step cannot be combined (an Optuna rule)")
    if step is not None and step <= 0:
        raise SpaceError(source, name, f"step must be positive, got {step}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def parse_space(doc: Any, source: str = "space") -> list[Param]:
    if not isinstance(doc, dict) or not doc:
        raise SpaceError(source, None, "the top level must be a non-empty mapping of key: distribution")
    return [parse_param(str(k), v, source) for k, v in doc.items()]


def load_space(path: str | Path) -> list[Param]:
    p = Path(path)
    try:
        doc = load_yaml(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaceError(str(p), None, "file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpaceError(str(p), None, f"not valid YAML (line {mark.line + 1 if mark else '?'})") from None
    return parse_space(doc, str(p))


def check_against_config(space: list[Param], config: str | Path | None, overrides: dict[str, Any],
                         source: str = "space") -> None:
    """Each key at its extremes must make a config the engine accepts; the first refusal names it."""
    from mlconnect.engine.config import load_config

    for p in space:
        for value in p.extremes():
            try:
                load_config(config, {**overrides, p.name: value})
            except ConfigError as exc:
                mine = [x for x in exc.problems if p.name in x] or exc.problems
                raise SpaceError(source, p.name, f"{value!r} is refused by the engine: {mine[0]}") from None


def suggest(trial: Any, space: list[Param]) -> dict[str, Any]:
    """Ask an Optuna trial for one value of each parameter."""
    out: dict[str, Any] = {}
    for p in space:
        if p.kind == "float":
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out


def to_dict(space: list[Param]) -> dict[str, Any]:
    """The space as YAML-able data (kept in the sweep's spec so resume needs no space.yaml)."""
    out: dict[str, Any] = {}
    for p in space:
        if p.kind == "choice":
            out[p.name] = {"choice": list(p.choices)}
        else:
            d: dict[str, Any] = {p.kind: [p.low, p.high]}
            if p.log:
                d["log"] = True
            if p.step is not None:
                d["step"] = p.step
            out[p.name] = d
    return out
