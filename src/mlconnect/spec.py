"""The shape of every message the laptop sends a host entry point (a run, a served model, a predict
job): a frozen dataclass with ``to_json``/``from_json``, the version checked, unknown fields refused,
each problem one line. Standard library only: the bundle server and every agent call import it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from typing import NoReturn, TypeVar

from mlconnect.errors import MlconnectError

SPEC_VERSION = 1
T = TypeVar("T", bound="Spec")


class SpecError(MlconnectError):
    """A spec the host cannot use (malformed, another version, a wrong field): one line naming the field."""


class Spec:
    """What the laptop sends a host entry point, as a frozen dataclass: ``to_json``/``from_json`` (the
    version checked, unknown fields refused, then the subclass's ``__post_init__`` checks the values)."""

    KIND = "spec"  # names the spec in its errors: "run spec: nproc is ..."

    def to_json(self) -> str:
        return json.dumps({"version": SPEC_VERSION, **asdict(self)}, sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], text: str | bytes) -> T:
        """Parse and validate; every problem is one line (:class:`SpecError`)."""
        return parse_spec(cls, text, cls.KIND)  # type: ignore[attr-defined]

    @classmethod
    def bad(cls, problem: str) -> NoReturn:
        raise SpecError(f"{cls.KIND}: {problem}", _HINT)


def parse_spec(cls: type[T], text: str | bytes, what: str) -> T:
    """A spec dataclass from its JSON (``version`` checked, unknown fields refused); the class's own
    ``__post_init__`` checks the values. Every problem is one :class:`SpecError` line."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{what} is not JSON: {exc}", _HINT) from None
    if not isinstance(doc, dict):
        raise SpecError(f"{what} is a JSON {type(doc).__name__}, not an object", _HINT)
    doc = dict(doc)
    version = doc.pop("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(f"{what} version {version!r} is not {SPEC_VERSION}", _SKEW)
    unknown = sorted(set(doc) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise SpecError(f"{what} has unknown field(s): {', '.join(unknown)}", _SKEW)
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING  # type: ignore[arg-type]
               and f.name not in doc]
    if missing:
        raise SpecError(f"{what} has no {missing[0]}", _HINT)
    for f in fields(cls):  # type: ignore[arg-type]
        if isinstance(doc.get(f.name), list):
            doc[f.name] = tuple(doc[f.name])  # JSON has no tuples
    return cls(**doc)


_HINT = "this is a bug in the client: run the same mlconnect version on both sides"
_SKEW = "run the same mlconnect version here and on the host (`mlconnect bootstrap`)"

