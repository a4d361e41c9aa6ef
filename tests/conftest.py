"""Shared fixtures: where the reference data lives, and tool checks that never skip silently in CI."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Tests press Ctrl-C on the commands they start (SIGINT). A suite started in the background
# (`make test &`, nohup) inherits SIGINT ignored, every child would inherit that too, and Python
# installs no KeyboardInterrupt handler when it starts with SIGINT ignored: the commands would never
# see the Ctrl-C. Give the children a terminal's default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _shared() -> Path:
    return REPO.parent / "shared"


def _datasets_dir() -> Path | None:
    env = os.environ.get("MLCONNECT_TEST_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(_shared() / "datasets")
    for c in candidates:
        if (c / "ml-100k" / "ml-100k.inter").is_file():
            return c
    return None


def need_or_skip(ok: bool, what: str) -> None:
    """Skip with a message outside CI; fail under CI=true, where a missing piece is a broken setup."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} (required under CI=true)")
    pytest.skip(what)


def require_tool(*names: str) -> None:
    for name in names:
        need_or_skip(shutil.which(name) is not None or Path(f"/usr/sbin/{name}").exists(),
                     f"{name} is not installed (apt-get install openssh-server rsync)")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The folder holding ``ml-100k/`` (MLCONNECT_TEST_DATA or ../shared/datasets)."""
    d = _datasets_dir()
    need_or_skip(d is not None, "ml-100k not found: set MLCONNECT_TEST_DATA or provide ../shared/datasets")
    return d  # type: ignore[return-value]


@pytest.fixture(scope="session")
def recbole_fixtures() -> Path:
    d = _shared() / "fixtures" / "recbole"
    env = os.environ.get("MLCONNECT_TEST_FIXTURES")
    if env:
        d = Path(env)
    need_or_skip((d / "ml-100k-split.json").is_file(),
                 "RecBole fixtures not found: set MLCONNECT_TEST_FIXTURES or provide ../shared/fixtures/recbole")
    return d


# Tests that need a trained model but not ml-100k itself (serving, ...) train on this, so a fresh clone
# without ../shared runs them; ml-100k stays for the RecBole-equality tests. 300 users x 200 items,
# 20k interactions: every user has >= 5 interactions and every item appears (ids "1".."200" all known).
SYNTH_DATASET = {"n_users": 300, "n_items": 200, "n_interactions": 20_000, "seed": 5}


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``(data_path, dataset)`` of a small synthetic dataset (mlconnect.data.synth), made once per session."""
    from mlconnect.data.synth import generate

    data = tmp_path_factory.mktemp("synth-data")
    generate(data, "synth", **SYNTH_DATASET)
    return data, "synth"
