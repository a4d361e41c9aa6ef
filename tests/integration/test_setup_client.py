"""`mlconnect setup client` on a config file of the test's own (HOME points at a temp folder too).

Real ssh-keygen and real ``ssh -G``: the effective values are what ssh itself resolves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import require_tool

pytestmark = pytest.mark.timeout(120)

ORIGINAL = (
    "# my own settings, with odd spacing   \n"
    "AddKeysToAgent yes\n"
    "\n"
    "Host github.com\n"
    "\tUser git\n"
    "\tIdentityFile ~/.ssh/github\n"
    "\n"
    "# defaults for everything else\n"
    "Host *\n"
    "  ServerAliveInterval 60\n"
    "  ForwardAgent yes\n"
    "  LocalForward 6006 localhost:6006\n"
)


def _mlc(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def _ssh_g(cfg: Path, alias: str) -> dict[str, list[str]]:
    cp = subprocess.run(["ssh", "-G", "-F", str(cfg), alias], capture_output=True, text=True, check=True, timeout=15)
    out: dict[str, list[str]] = {}
    for line in cp.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, []).append(v)
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    require_tool("ssh", "ssh-keygen")
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    return h


def _client(home: Path, cfg: Path, port: int = 2222, *extra: str) -> subprocess.CompletedProcess[str]:
    return _mlc(["setup", "client", "--name", "mellowise-ml", "--hostname", "192.168.1.50", "--port", str(port),
                 "--user", "ana", "--ssh-config", str(cfg), *extra], home)


def test_block_round_trip_idempotent_and_outside_bytes_kept(home: Path):
    cfg = home / ".ssh" / "config"
    cfg.write_text(ORIGINAL)
    cp = _client(home, cfg)
    assert cp.returncode == 0, cp.stderr
    key = home / ".ssh" / "mellowise-ml_ed25519"
    pub = (home / ".ssh" / "mellowise-ml_ed25519.pub").read_text().strip()
    assert key.is_file() and (key.stat().st_mode & 0o777) == 0o600
    # The public key and the one command for the box are printed.
    assert pub in cp.stdout
    # `Host *` adds a LocalForward ssh cannot switch off per host: said, not silently kept.
    assert "LocalForward 6006" in cp.stderr and "warning:" in cp.stderr
    assert f'sudo "$(command -v mlconnect)" setup server --port 2222 --authorized-key "{pub}" --apply' in cp.stdout

    new = cfg.read_text()
    begin, end = "# >>> mlconnect mellowise-ml >>>\n", "# <<< mlconnect mellowise-ml <<<\n"
    block = new[new.index(begin): new.index(end) + len(end)]
    # Inserted before the `Host *` catch-all (and its comment); every other byte is the original's.
    at = ORIGINAL.index("# defaults for everything else")
    assert new == ORIGINAL[:at] + block + "\n" + ORIGINAL[at:]
    assert "\n  LocalForward" not in block and "\n  ForwardAgent no\n" in block
    backups = sorted(home.glob(".ssh/config.mlconnect-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == ORIGINAL

    # ssh itself resolves our values, although `Host *` says ForwardAgent yes and ServerAliveInterval 60.
    eff = _ssh_g(cfg, "mellowise-ml")
    assert eff["forwardagent"] == ["no"]
    assert eff["port"] == ["2222"] and eff["user"] == ["ana"] and eff["hostname"] == ["192.168.1.50"]
    assert eff["identitiesonly"] == ["yes"]
    assert eff["serveraliveinterval"] == ["15"] and eff["serveralivecountmax"] == ["3"]
    assert eff["identityfile"][0] == "~/.ssh/mellowise-ml_ed25519" or \
        os.path.expanduser(eff["identityfile"][0]).endswith(".ssh/mellowise-ml_ed25519")
    # Other hosts are untouched.
    assert _ssh_g(cfg, "github.com")["forwardagent"] == ["yes"]

    # Second run: nothing changes, no new backup, the key is reused (never overwritten).
    key_bytes = key.read_bytes()
    cp2 = _client(home, cfg)
    assert cp2.returncode == 0, cp2.stderr
    assert cfg.read_text() == new
    assert "nothing changed" in cp2.stderr and "using existing key" in cp2.stderr
    assert len(sorted(home.glob(".ssh/config.mlconnect-backup-*"))) == 1
    assert key.read_bytes() == key_bytes

    # A changed port replaces the block in place; still nothing outside it moves.
    cp3 = _client(home, cfg, 2200)
    assert cp3.returncode == 0, cp3.stderr
    newer = cfg.read_text()
    assert newer == new.replace("  Port 2222\n", "  Port 2200\n")
    assert _ssh_g(cfg, "mellowise-ml")["port"] == ["2200"]


def test_new_file_and_existing_key_kept(home: Path, tmp_path: Path):
    cfg = home / ".ssh" / "config"
    key = tmp_path / "keys" / "mine"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "old", "-f", str(key)], check=True)
    before = key.read_bytes(), Path(f"{key}.pub").read_bytes()
    cp = _client(home, cfg, 2222, "--key", str(key))
    assert cp.returncode == 0, cp.stderr
    assert (key.read_bytes(), Path(f"{key}.pub").read_bytes()) == before
    assert (cfg.stat().st_mode & 0o777) == 0o600
    assert not list(home.glob(".ssh/config.mlconnect-backup-*"))  # nothing to back up
    eff = _ssh_g(cfg, "mellowise-ml")
    assert os.path.expanduser(eff["identityfile"][0]) == str(key)
    assert Path(f"{key}.pub").read_text().strip() in cp.stdout


def test_global_override_is_refused_and_nothing_written(home: Path):
    cfg = home / ".ssh" / "config"
    text = "ForwardAgent yes\nPort 22\n\nHost other\n  User x\n"
    cfg.write_text(text)
    cp = _client(home, cfg)
    assert cp.returncode == 1
    err = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), cp.stderr
    assert "forwardagent would be 'yes'" in err[0] and "port would be '22'" in err[0]
    assert cfg.read_text() == text
    assert not list(home.glob(".ssh/config.mlconnect-backup-*"))
    assert not [p for p in (home / ".ssh").iterdir() if p.name.endswith(".tmp")]


def test_damaged_block_is_refused(home: Path):
    cfg = home / ".ssh" / "config"
    text = "# >>> mlconnect mellowise-ml >>>\nHost mellowise-ml\n  Port 1\n"
    cfg.write_text(text)
    cp = _client(home, cfg)
    assert cp.returncode == 1 and "damaged" in cp.stderr
    assert cfg.read_text() == text


def test_bad_name_is_one_clear_error(home: Path):
    cp = _mlc(["setup", "client", "--name", "bad name*", "--hostname", "1.2.3.4",
               "--ssh-config", str(home / ".ssh" / "config")], home)
    assert cp.returncode == 2 and "invalid --name" in cp.stderr
    assert not (home / ".ssh" / "config").exists()
