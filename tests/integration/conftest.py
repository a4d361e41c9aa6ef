"""The ``sshd_host`` fixture: a real OpenSSH server on 127.0.0.1 for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support.sshd import SshdHost, start_sshd


def _require_tool(*names: str) -> None:
    # tests/conftest.py's helper; loaded by path because this file is also named conftest.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_mlc_root_conftest", Path(__file__).parents[1] / "conftest.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.require_tool(*names)


@pytest.fixture(scope="session")
def sshd_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdHost]:
    _require_tool("sshd", "ssh", "ssh-keygen", "rsync")
    base = tmp_path_factory.mktemp("sshd")
    # Our own control-socket dir, short and private to this test session.
    os.environ["MLCONNECT_CONTROL_DIR"] = str(base / "cm")
    host = start_sshd(base / "srv")
    yield host
    _end_masters(base / "cm")
    host.stop()


def _end_masters(control_dir) -> None:
    """End the ControlPersist masters the tests opened: they would outlive the session by minutes."""
    import contextlib
    import signal

    from mlconnect.remote.master import is_our_ssh, socket_holders

    for sock in control_dir.glob("*") if control_dir.is_dir() else []:
        for pid in socket_holders(str(sock)):
            if is_our_ssh(pid):  # by the pid holding our socket, never by name
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
