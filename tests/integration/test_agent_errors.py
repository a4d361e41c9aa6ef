"""Agent failures are types, not return codes: ``Target.agent`` raises the ``AgentError`` tree.

Real agents in real processes: this machine's agent refusing on purpose, an interpreter without
mlconnect, a program that prints something else, and ssh to a port where nothing listens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.conftest import require_tool

from mlconnect.errors import (
    AgentError,
    AgentProtocolError,
    AgentRefused,
    AgentUnreachable,
    RemoteError,
)
from mlconnect.remote.ssh import Target
from support.sshd import free_port


def _here(tmp_path: Path, python: str = sys.executable) -> Target:
    return Target(name="local", is_local=True, remote_root=str(tmp_path), python=python)


def test_a_refusal_is_agent_refused_with_the_hosts_words_and_type(tmp_path: Path) -> None:
    with pytest.raises(AgentRefused) as err:
        _here(tmp_path).agent("show", "--experiment", "nope")
    assert err.value.remote_type == "ExperimentError" and err.value.exit_code == 1
    assert str(err.value).startswith("unknown experiment 'nope'") and "\n" not in str(err.value)
    assert isinstance(err.value, AgentError) and isinstance(err.value, RemoteError)  # one tree
    with pytest.raises(AgentRefused) as err:  # the host's usage error keeps its exit code
        _here(tmp_path).agent("start", "--name", "s", "--space", "s.yaml", "--trials", "1", "--seeds", "x",
                              module="mlconnect.sweeps.agent")
    assert err.value.remote_type == "UsageError" and err.value.exit_code == 2


def test_no_agent_there_is_a_protocol_error(tmp_path: Path) -> None:
    chatty = tmp_path / "chatty"
    chatty.write_text("#!/bin/sh\necho 'welcome to the box'\n")
    chatty.chmod(0o755)
    with pytest.raises(AgentProtocolError, match="printed something that is not JSON"):
        _here(tmp_path, str(chatty)).agent("ps")
    with pytest.raises(AgentProtocolError, match="was not found on this machine|is not installed on this"):
        _here(tmp_path, str(tmp_path / "no-python")).agent("ps")


def test_a_host_nobody_answers_is_unreachable(tmp_path: Path) -> None:
    require_tool("ssh")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host deadbox\n  HostName 127.0.0.1\n  Port {free_port()}\n  BatchMode yes\n"
                   f"  ConnectTimeout 5\n  ControlPath {tmp_path}/cm-%C\n")
    target = Target(name="deadbox", is_local=False, remote_root="~/p", python="python3", ssh_config=str(cfg))
    with pytest.raises(AgentUnreachable, match="cannot reach deadbox"):
        target.agent("ps", timeout=20)
