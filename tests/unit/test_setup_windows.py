"""Golden-style checks of the Windows scripts `mlconnect setup windows` writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlconnect.errors import UsageError
from mlconnect.setup.windows import SERVICE_PORTS, parse_lan, write_windows_setup


def _read(p: Path) -> str:
    raw = p.read_bytes()
    raw.decode("ascii")  # Windows PowerShell 5.1 reads BOM-less files as ANSI: ASCII only
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF throughout
    return raw.decode().replace("\r\n", "\n")


def _outside_opt_in(text: str) -> list[str]:
    """The lines that run by default: everything but the `if ($IncludeServicePorts) {...}` body."""
    out, skip, depth = [], False, 0
    for ln in text.splitlines():
        if not skip and ln.strip().startswith("if ($IncludeServicePorts)"):
            skip, depth = True, ln.count("{") - ln.count("}")
            continue
        if skip:
            if depth - ln.count("}") <= 0:  # the line closing the if-body (maybe opening `else`)
                skip = False
                continue
            depth += ln.count("{") - ln.count("}")
            continue
        out.append(ln)
    return out


def test_default_scripts(tmp_path: Path):
    files = write_windows_setup(tmp_path, lan="192.168.1.0/24", ssh_port=2222, memory="24GB", processors=12)
    assert sorted(p.name for p in files) == [".wslconfig", "README.txt", "firewall.ps1", "forward_ports.ps1",
                                             "schedule_forwarding.ps1"]
    fwd = _read(tmp_path / "forward_ports.ps1")
    # Re-reads the WSL address on every run.
    assert "$wslIp = (& wsl.exe @wslArgs -- hostname -I)" in fwd
    assert "param([switch]$IncludeServicePorts" in fwd and "$sshPort = 2222" in fwd
    default = _outside_opt_in(fwd)
    adds = [ln.strip() for ln in default if "portproxy add" in ln]
    assert adds == ["netsh interface portproxy add v4tov4 listenport=$sshPort listenaddress=0.0.0.0 "
                    "connectport=$sshPort connectaddress=$wslIp"]
    # No service port listens anywhere by default; the default path even removes old 0.0.0.0 forwards.
    for ln in default:
        if "0.0.0.0" in ln and "portproxy add" in ln:
            assert "$sshPort" in ln
        for p in SERVICE_PORTS:
            assert not re.search(rf"listenport={p}\b", ln)
    assert "portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0" in "\n".join(default)

    fw = _read(tmp_path / "firewall.ps1")
    rules = [ln.strip() for ln in fw.splitlines() if re.match(r"\s*New-NetFirewall(HyperV)?Rule\b", ln)]
    assert rules, fw
    assert '$lan = "192.168.1.0/24"' in fw
    for r in rules:  # every rule: a RemoteAddress, the LAN, the Private profile
        assert "-RemoteAddress $lan" in r and "-Profile Private" in r and "-Direction Inbound" in r
    default_rules = [ln.strip() for ln in _outside_opt_in(fw) if ln.strip().startswith("New-NetFirewallRule")]
    assert default_rules == ['New-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" -Direction Inbound -Action Allow '
                             "-Protocol TCP -LocalPort 2222 -Profile Private -RemoteAddress $lan | Out-Null"]
    assert "Disable-NetFirewallRule" in fw and '"WSL2 TensorBoard"' in fw  # the old guide's open rules
    assert "HyperV" not in fw

    task = _read(tmp_path / "schedule_forwarding.ps1")
    assert "New-ScheduledTaskTrigger -AtLogOn" in task and "forward_ports.ps1" in task
    assert "IncludeServicePorts" not in task

    wsl = _read(tmp_path / ".wslconfig")
    assert "[wsl2]\nmemory=24GB\nprocessors=12\n" in wsl
    assert "\nvmIdleTimeout=-1" not in wsl and "# vmIdleTimeout=-1" in wsl
    assert "networkingMode" not in wsl

    readme = _read(tmp_path / "README.txt")
    order = [readme.index(s) for s in (".wslconfig", "setup server", "firewall.ps1", "forward_ports.ps1",
                                       "schedule_forwarding.ps1", "mlconnect doctor")]
    assert order == sorted(order)


def test_mirrored_and_idle_timeout(tmp_path: Path):
    files = write_windows_setup(tmp_path, lan="10.0.0.0/16", ssh_port=2200, memory="16384MB", processors=8,
                                no_idle_timeout=True, mirrored=True)
    assert sorted(p.name for p in files) == [".wslconfig", "README.txt", "firewall.ps1"]
    wsl = _read(tmp_path / ".wslconfig")
    assert "\nnetworkingMode=mirrored\n" in wsl and "\nvmIdleTimeout=-1\n" in wsl and "memory=16384MB" in wsl
    fw = _read(tmp_path / "firewall.ps1")
    hv = [ln for ln in fw.splitlines() if ln.startswith("New-NetFirewallHyperVRule")]
    assert len(hv) == 1 and "-RemoteAddresses $lan" in hv[0] and "-LocalPorts 2200" in hv[0]
    for ln in fw.splitlines():
        if re.match(r"\s*New-NetFirewallRule\b", ln):
            assert "-RemoteAddress $lan" in ln
    assert "portproxy" not in _read(tmp_path / "README.txt").split("Undo:")[0]


@pytest.mark.parametrize("bad", ["banana", "192.168.1.0/33", "0.0.0.0/0", "8.8.8.0/24", "192.168.1.5", "::/0"])
def test_bad_lan_is_refused(bad: str):
    with pytest.raises(UsageError) as e:
        parse_lan(bad)
    assert e.value.message.startswith(f"invalid --lan {bad!r}") and "192.168.1.0/24" in e.value.hint


def test_lan_normalised():
    assert parse_lan("192.168.1.7/24") == "192.168.1.0/24"


def test_cli_bad_cidr_one_line_nothing_written(tmp_path: Path):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "setup", "windows", "--out", str(tmp_path / "w"),
                         "--lan", "192.168.1.0/99"], capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 2
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid --lan '192.168.1.0/99'"), cp.stderr
    assert not (tmp_path / "w").exists()
