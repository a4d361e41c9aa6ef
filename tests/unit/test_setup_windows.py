"""The Windows scripts `mlconnect setup windows` writes, checked as text (no Windows here).

Every cmdlet and parameter is checked against a list taken from Microsoft's cmdlet reference;
every script is parsed with a PowerShell grammar (tree-sitter, from PyPI: Microsoft's own
PowerShell cannot be installed from the registries this project reaches); and the output is
compared with golden files (MLCONNECT_UPDATE_GOLDEN=1 rewrites them after a deliberate change).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import need_or_skip

from mlconnect.errors import UsageError
from mlconnect.setup import windows_scripts as ps
from mlconnect.setup.windows import notes, parse_lan, write_windows_setup

GOLDEN = Path(__file__).parent / "golden" / "windows"

# Cmdlet -> the named parameters these scripts may use (Microsoft's cmdlet reference; Windows PowerShell 5.1).
CMDLETS: dict[str, set[str]] = {
    "Get-NetConnectionProfile": set(), "Format-Table": {"AutoSize", "Property"}, "Where-Object": set(),
    "Write-Error": set(), "Write-Host": set(), "Write-Warning": set(), "Out-Null": set(),
    "Get-NetFirewallRule": {"DisplayName", "ErrorAction"}, "Remove-NetFirewallRule": set(),
    "Disable-NetFirewallRule": set(), "Get-NetFirewallAddressFilter": set(),
    "New-NetFirewallRule": {"DisplayName", "Direction", "Action", "Protocol", "LocalPort", "Profile", "RemoteAddress"},
    "Get-NetFirewallHyperVRule": {"Name", "ErrorAction"}, "Remove-NetFirewallHyperVRule": set(),
    "New-NetFirewallHyperVRule": {"Name", "DisplayName", "Direction", "VMCreatorId", "Protocol", "LocalPorts",
                                  "RemoteAddresses", "Profiles", "Action"},
    "Get-ScheduledTask": {"TaskName", "ErrorAction"}, "Unregister-ScheduledTask": {"TaskName", "Confirm"},
    "Stop-ScheduledTask": {"TaskName"}, "Start-ScheduledTask": {"TaskName"},
    "New-ScheduledTaskAction": {"Execute", "Argument", "WorkingDirectory"},
    "New-ScheduledTaskTrigger": {"AtLogOn", "AtStartup", "User"},
    "New-ScheduledTaskSettingsSet": {"AllowStartIfOnBatteries", "DontStopIfGoingOnBatteries", "ExecutionTimeLimit",
                                     "MultipleInstances", "StartWhenAvailable", "RestartCount", "RestartInterval"},
    "New-ScheduledTaskPrincipal": {"UserId", "LogonType", "RunLevel"},
    "Register-ScheduledTask": {"TaskName", "Action", "Trigger", "Settings", "Principal", "User", "Password",
                               "RunLevel", "Force"},
    "Get-Credential": {"UserName", "Message"}, "New-TimeSpan": {"Seconds", "Minutes"},
    "Join-Path": set(), "Test-Path": set(), "Get-CimInstance": set(), "Copy-Item": {"Force"},
    "New-Item": {"ItemType", "Path"}, "Remove-Item": {"ErrorAction"}, "Sort-Object": set(),
    "Get-ChildItem": {"Path", "Filter", "Force", "ErrorAction"}, "Select-Object": {"First"},
    "Get-Date": {"Format"}, "New-Object": set(), "Start-Sleep": {"Seconds"},
    "Set-IniValue": set(),  # wslconfig.ps1's own function
}
NAT_FILES = ["README.txt", "firewall.ps1", "forward_ports.ps1", "keepalive.ps1", "schedule_keepalive.ps1",
             "undo.ps1", "wslconfig.ps1"]


def _read(p: Path) -> str:
    raw = p.read_bytes()
    raw.decode("ascii")  # Windows PowerShell 5.1 reads BOM-less files as ANSI: ASCII only
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF throughout
    return raw.decode().replace("\r\n", "\n")


def _gen(tmp_path: Path, name: str = "out", **kw) -> dict[str, str]:
    kw.setdefault("lan", "192.168.1.0/24")
    files = write_windows_setup(tmp_path / name, **kw)
    return {p.name: _read(p) for p in files}


def _code(text: str) -> list[str]:
    """Lines without comments, quoted strings blanked (a cmdlet name in a message is not a call)."""
    out = []
    for ln in text.splitlines():
        ln = re.sub(r'"(?:[^"`]|`.|"")*"|\'[^\']*\'', '"S"', ln)
        out.append(ln.split("#", 1)[0])
    return out


def _calls(text: str) -> list[tuple[str, list[str]]]:
    """(cmdlet, its -Parameters) for every Verb-Noun call; a (subexpression) is its own call."""
    call = re.compile(r"(?<![\w$-])([A-Z][a-z]+-[A-Z][A-Za-z]+)\b([^|;{}]*)")
    calls = []

    def take(segment: str) -> None:
        for m in call.finditer(segment):
            calls.append((m.group(1), re.findall(r"(?<=\s)-([A-Za-z]+)", m.group(2))))

    for ln in _code(text):
        while (inner := re.search(r"\(([^()]*)\)", ln)) is not None:  # innermost first
            take(inner.group(1))
            ln = ln[:inner.start()] + " P " + ln[inner.end():]
        take(ln)
    return calls


@pytest.mark.parametrize("kw", [{}, {"mirrored": True, "at_startup": True, "no_idle_timeout": True}],
                         ids=["nat", "mirrored"])
def test_every_cmdlet_and_parameter_is_known(tmp_path, kw):
    files = _gen(tmp_path, **kw)
    seen = set()
    for name, text in files.items():
        if not name.endswith(".ps1"):
            continue
        for cmdlet, params in _calls(text):
            assert cmdlet in CMDLETS, f"{name}: unknown cmdlet {cmdlet}"
            for p in params:
                assert p in CMDLETS[cmdlet], f"{name}: {cmdlet} has no -{p}"
            seen.add(cmdlet)
    assert {"Register-ScheduledTask", "New-NetFirewallRule", "Set-IniValue"} <= seen


def test_the_cmdlet_check_can_fail():
    calls = _calls('$x = (Get-ScheduledTask -TaskName "t") | New-NetFirewallHyperVRule -Profile Private -Foo')
    assert calls == [("Get-ScheduledTask", ["TaskName"]), ("New-NetFirewallHyperVRule", ["Profile", "Foo"])]
    assert "Profile" not in CMDLETS["New-NetFirewallHyperVRule"]  # it is -Profiles there


def test_nat_scripts(tmp_path):
    f = _gen(tmp_path)
    assert sorted(f) == NAT_FILES
    fwd = f["forward_ports.ps1"]
    assert "--exec ip -4 -o addr show eth0" in fwd and "hostname -I" not in "\n".join(_code(fwd))
    adds = [ln.strip() for ln in _code(fwd) if "portproxy add" in ln]
    assert adds == ["netsh interface portproxy add v4tov4 listenport=$sshPort listenaddress=0.0.0.0 "
                    "connectport=$sshPort connectaddress=$wslIp"]
    assert "$sshPort = 2222" in fwd and "IncludeServicePorts" not in fwd
    for p in ps.OLD_SERVICE_PORTS:  # old service forwards are only ever deleted
        assert str(p) in fwd and not re.search(rf"add .*listenport={p}\b", fwd)
    # The keep-alive task refreshes the forward each time it starts the distro, then holds it up.
    keep = f["keepalive.ps1"]
    loop = keep[keep.index("while ($true)"):]
    assert loop.index("forward_ports.ps1") < loop.index("--exec sleep infinity")
    assert "HyperV" not in f["firewall.ps1"] and "portproxy" not in f["firewall.ps1"]


def test_firewall_checks_the_profile_first_and_admits_only_the_lan(tmp_path):
    for kw in ({}, {"mirrored": True}):
        fw = _gen(tmp_path, name=str(kw), **kw)["firewall.ps1"]
        code = "\n".join(_code(fw))
        assert code.index("Get-NetConnectionProfile") < code.index("New-NetFirewallRule")
        assert 'NetworkCategory -eq "S"' in code and fw.count('-eq "Private"') == 1
        assert '$lan = "192.168.1.0/24"' in fw
        for ln in (x.strip() for x in _code(fw)):
            if ln.startswith("New-NetFirewallRule"):
                assert "-RemoteAddress $lan" in ln and "-Profile Private" in ln and "-LocalPort 2222" in ln
            if ln.startswith("New-NetFirewallHyperVRule"):
                assert "-RemoteAddresses $lan" in ln and "-Profiles Private" in ln and "-LocalPorts 2222" in ln
        assert fw.count("New-NetFirewallRule ") == 1 and "Disable-NetFirewallRule" in fw


def test_mirrored_cleans_up_nat_first(tmp_path):
    f = _gen(tmp_path, mirrored=True, ssh_port=2200, lan="10.0.0.0/16")
    assert sorted(f) == [n for n in NAT_FILES if n != "forward_ports.ps1"]
    fw = "\n".join(_code(f["firewall.ps1"]))
    cleanup = [fw.index("portproxy delete v4tov4 listenport=2200"), fw.index("Unregister-ScheduledTask")]
    assert max(cleanup) < fw.index("New-NetFirewallHyperVRule")
    assert '-TaskName "S"' in fw and f'"{ps.OLD_TASK_NAME}"' in f["firewall.ps1"]
    assert "forward_ports" not in f["keepalive.ps1"] and "--exec sleep infinity" in f["keepalive.ps1"]
    assert 'Set-IniValue $lines "wsl2" "networkingMode" "mirrored"' in f["wslconfig.ps1"]
    assert "localhostForwarding" not in f["wslconfig.ps1"]
    assert "'mirrored'" in f["schedule_keepalive.ps1"] and "wslinfo --networking-mode" in f["schedule_keepalive.ps1"]


def test_wslconfig_keys_and_fractions(tmp_path):
    default = _gen(tmp_path, name="a")["wslconfig.ps1"]
    assert "TotalPhysicalMemory" in default and "NumberOfLogicalProcessors" in default
    assert "* 3 / 4" in default and "24GB" not in default
    assert 'Set-IniValue $lines "wsl2" "networkingMode" "nat"' in default
    assert "instanceIdleTimeout" not in default and "vmIdleTimeout" not in default
    fixed = _gen(tmp_path, name="b", memory="16384MB", processors=8, no_idle_timeout=True)["wslconfig.ps1"]
    assert '$memory = "16384MB"' in fixed and "$processors = 8" in fixed
    # --no-idle-timeout writes both keys, each in its own section.
    assert 'Set-IniValue $lines "general" "instanceIdleTimeout" "-1"' in fixed
    assert 'Set-IniValue $lines "wsl2" "vmIdleTimeout" "-1"' in fixed
    assert "Copy-Item $path $backup" in fixed and "New-Item -ItemType File -Path $backup" in fixed


def test_schedule_task_settings(tmp_path):
    logon = _gen(tmp_path, name="a")["schedule_keepalive.ps1"]
    settings = next(ln for ln in logon.splitlines() if "New-ScheduledTaskSettingsSet" in ln)
    for part in ("-AllowStartIfOnBatteries", "-DontStopIfGoingOnBatteries",
                 "-ExecutionTimeLimit (New-TimeSpan -Seconds 0)", "-MultipleInstances IgnoreNew"):
        assert part in settings
    assert "New-ScheduledTaskTrigger -AtLogOn -User $user" in logon and "-AtStartup" not in logon
    assert "-LogonType Interactive -RunLevel Highest" in logon and "Get-Credential" not in logon
    assert f'$taskName = "{ps.TASK_NAME}"' in logon and "& $wsl --list --running" in logon
    boot = _gen(tmp_path, name="b", at_startup=True, distro="Ubuntu-24.04")["schedule_keepalive.ps1"]
    assert "$triggers += New-ScheduledTaskTrigger -AtStartup" in boot
    reg = next(ln for ln in boot.splitlines() if ln.startswith("Register-ScheduledTask"))
    assert "-User $user -Password $password -RunLevel Highest" in reg and "-Principal" not in reg
    assert 'param([string]$Distro = "Ubuntu-24.04")' in boot


@pytest.mark.parametrize("kw", [{}, {"mirrored": True}], ids=["nat", "mirrored"])
def test_undo_removes_everything_the_scripts_create(tmp_path, kw):
    f = _gen(tmp_path, ssh_port=2233, **kw)
    undo, made = f["undo.ps1"], "\n".join(t for n, t in f.items() if n not in ("undo.ps1", "README.txt"))
    for rule in set(re.findall(r'New-NetFirewallRule -DisplayName "([^"]+)"', made)) | {ps.SERVICES_RULE}:
        removal = f'Get-NetFirewallRule -DisplayName "{rule}" -ErrorAction SilentlyContinue | Remove-NetFirewallRule'
        assert removal in undo
    for rule in re.findall(r'New-NetFirewallHyperVRule -Name "([^"]+)"', made):
        assert f'Get-NetFirewallHyperVRule -Name "{rule}"' in undo and "Remove-NetFirewallHyperVRule" in undo
    assert f'"{ps.HYPERV_RULE}"' in undo
    for task in (ps.TASK_NAME, ps.OLD_TASK_NAME):
        assert f'"{task}"' in undo
    assert "Stop-ScheduledTask -TaskName $t" in undo and "Unregister-ScheduledTask -TaskName $t -Confirm:$false" in undo
    assert "@(2233, 6006, 8888, 8000, 5000)" in undo and "portproxy delete v4tov4 listenport=$p" in undo
    assert f".wslconfig{ps.BACKUP_SUFFIX}*" in undo and "Sort-Object Name | Select-Object -First 1" in undo
    sh = re.search(r"--exec sh -c '([^']*)'", undo).group(1)
    assert '"' not in sh  # Windows PowerShell 5.1 would mangle double quotes for wsl.exe
    assert "rm -f /etc/ssh/sshd_config.d/00-mlconnect.conf" in sh and "cp -p $b /etc/wsl.conf" in sh
    assert "-u root" in undo


def test_readme_order_and_notes(tmp_path):
    readme = _gen(tmp_path, no_idle_timeout=True)["README.txt"]
    order = [readme.index(s) for s in ("wslconfig.ps1", 'sudo "$(command -v mlconnect)" setup server', "wsl --shutdown",
                                       "Get-NetConnectionProfile", "Run .\\firewall.ps1", "Run .\\forward_ports.ps1",
                                       "Run .\\schedule_keepalive.ps1", "mlconnect doctor", "undo.ps1")]
    assert order == sorted(order)
    for line in notes(at_startup=False, no_idle_timeout=True):
        assert line in readme
    text = " ".join(notes(at_startup=False, no_idle_timeout=True))
    for must in ("do not sign out", "Lock the screen", "Sleep and hibernate", "wsl.exe --list --running",
                 "mlconnect doctor", "instanceIdleTimeout=-1", "vmIdleTimeout=-1", "WSL 2.5.8+"):
        assert must in text


@pytest.mark.parametrize("case, kw", [
    ("nat", {}),
    ("mirrored", {"mirrored": True, "at_startup": True, "no_idle_timeout": True, "memory": "24GB", "processors": 12,
                  "distro": "Ubuntu", "lan": "10.1.0.0/16", "ssh_port": 2200}),
])
def test_golden(tmp_path, case, kw):
    f = _gen(tmp_path, **kw)
    want = GOLDEN / case
    if os.environ.get("MLCONNECT_UPDATE_GOLDEN"):
        want.mkdir(parents=True, exist_ok=True)
        for old in want.iterdir():
            old.unlink()
        for name, text in f.items():
            (want / name).write_text(text)
    assert sorted(p.name for p in want.iterdir()) == sorted(f)
    for name, text in f.items():
        assert text == (want / name).read_text(), f"{case}/{name} differs (MLCONNECT_UPDATE_GOLDEN=1 after review)"


def test_every_script_parses_as_powershell(tmp_path):
    try:
        from tree_sitter_language_pack import get_parser
    except ImportError:
        get_parser = None
    need_or_skip(get_parser is not None, "tree-sitter-language-pack is not installed (pip install -e '.[dev]')")
    parser = get_parser("powershell")
    scripts = {**_gen(tmp_path, name="a"), **{f"m-{k}": v for k, v in _gen(
        tmp_path, name="b", mirrored=True, at_startup=True, no_idle_timeout=True).items()}}
    scripts = {k: v for k, v in scripts.items() if k.endswith(".ps1")}
    assert len(scripts) == 11
    for name, text in scripts.items():
        assert not parser.parse(text.encode()).root_node.has_error, name
    # The check can fail: a lost brace is caught.
    broken = scripts["keepalive.ps1"].replace("while ($true) {", "while ($true)  (", 1)
    assert parser.parse(broken.encode()).root_node.has_error


@pytest.mark.parametrize("bad", ["banana", "192.168.1.0/33", "0.0.0.0/0", "8.8.8.0/24", "192.168.1.5", "::/0"])
def test_bad_lan_is_refused(bad: str):
    with pytest.raises(UsageError) as e:
        parse_lan(bad)
    assert e.value.message.startswith(f"invalid --lan {bad!r}") and "192.168.1.0/24" in e.value.hint


@pytest.mark.parametrize("kw, msg", [({"distro": "Ubuntu; rm"}, "invalid --distro"),
                                     ({"memory": "24G"}, "invalid --memory"), ({"ssh_port": 8888}, "service port")])
def test_bad_options_are_refused(tmp_path, kw, msg):
    with pytest.raises(UsageError, match=msg):
        write_windows_setup(tmp_path / "w", lan="192.168.1.0/24", **kw)
    assert not (tmp_path / "w").exists()


def test_lan_normalised():
    assert parse_lan("192.168.1.7/24") == "192.168.1.0/24"


def test_cli_prints_what_keeps_the_box_up_and_bad_cidr_is_one_line(tmp_path: Path):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    run = [sys.executable, "-m", "mlconnect", "setup", "windows", "--out"]
    cp = subprocess.run([*run, str(tmp_path / "w"), "--lan", "192.168.1.0/24", "--at-startup"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout + cp.stderr
    assert "do not sign out" in out and "wsl.exe --list --running" in out and "--at-startup" in out
    assert "-AtStartup" in (tmp_path / "w" / "schedule_keepalive.ps1").read_text()
    cp = subprocess.run([*run, str(tmp_path / "v"), "--lan", "192.168.1.0/99"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 2
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid --lan '192.168.1.0/99'"), cp.stderr
    assert not (tmp_path / "v").exists()
