"""Settings: discovery, precedence, validation, the init template."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlconnect.errors import ConfigError, UsageError
from mlconnect.remote.ssh import resolve_target
from mlconnect.settings import load_settings, render_template, write_project_file


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCONNECT_CONFIG", str(tmp_path / "user.toml"))
    for k in ("MLCONNECT_HOST", "MLCONNECT_SSH_CONFIG", "MLCONNECT_REMOTE_ROOT", "MLCONNECT_DATA_PATH"):
        monkeypatch.delenv(k, raising=False)


def test_precedence_user_project_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user.toml").write_text('default_host = "u"\n[hosts.b]\nport = 22\nuser = "me"\n')
    proj = tmp_path / "p"
    (proj / "sub").mkdir(parents=True)
    (proj / "mlconnect.toml").write_text('default_host = "b"\n[hosts.b]\nport = 2222\nremote_root = "~/r"\n')
    s = load_settings(proj / "sub")
    assert s.project_root == proj.resolve() and s.default_host == "b"
    assert s.hosts["b"].port == 2222 and s.hosts["b"].user == "me"  # merged key by key
    monkeypatch.setenv("MLCONNECT_HOST", "e")
    assert load_settings(proj).default_host == "e"
    assert load_settings(proj, overrides={"default_host": "f"}).default_host == "f"
    t = resolve_target(settings=load_settings(proj, overrides={"default_host": "b"}))
    assert not t.is_local and t.remote_root == "~/r" and t.host and t.host.port == 2222


def test_no_host_is_local(tmp_path: Path) -> None:
    t = resolve_target(settings=load_settings(tmp_path))
    assert t.is_local and t.remote_root == str(tmp_path.resolve())


def test_all_problems_at_once(tmp_path: Path) -> None:
    (tmp_path / "mlconnect.toml").write_text('defualt_host = "x"\n[hosts.a]\nport = "22"\nenv = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(tmp_path)
    assert len(ei.value.problems) == 3


def test_template_round_trips_and_refuses_overwrite(tmp_path: Path) -> None:
    text = render_template(host="mellowise-ml", hostname="192.168.1.50", port=2222, user="ana")
    write_project_file(tmp_path, text)
    s = load_settings(tmp_path)
    assert s.default_host == "mellowise-ml" and s.hosts["mellowise-ml"].port == 2222
    with pytest.raises(UsageError):
        write_project_file(tmp_path, text)
