# ruff: noqa: E501  (generated PowerShell commands stay on one line each, as a person would copy them)
"""`mlconnect setup windows`: the Windows side of a WSL2 GPU box, as scripts a person reads and runs.

Differences from the manual guide, on purpose:

- Only the SSH port is forwarded from the LAN. TensorBoard, Jupyter, the API and MLflow are reached
  through SSH tunnels (`mlconnect tensorboard`, ...), so they never listen on 0.0.0.0 by default;
  ``forward_ports.ps1 -IncludeServicePorts`` opts in, and then only from the LAN subnet.
- One firewall rule, SSH port only, Private profile, ``-RemoteAddress <LAN CIDR>``. The old guide's
  open-to-everyone rules ("WSL2 SSH", "WSL2 TensorBoard", ...) are disabled, not deleted.
- The WSL IP changes at every WSL restart: forward_ports.ps1 reads it on every run, and a scheduled
  task reruns it at logon.
- ``--mirrored``: WSL mirrored networking (Windows 11 22H2+) instead of portproxy; the Hyper-V
  firewall then needs its own rule, also limited to the LAN.

Scripts are ASCII with CRLF line ends (Windows PowerShell 5.1 reads BOM-less files as ANSI).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from mlconnect.errors import UsageError
from mlconnect.fileio import atomic_write_bytes

SERVICE_PORTS = (6006, 8888, 8000, 5000)  # TensorBoard, Jupyter, serve API, MLflow
WSL_VM_CREATOR = "{40E0AC32-46A5-438A-A0B2-2B479E8F2E90}"  # Hyper-V firewall id of WSL
RULE_NAME = "mlconnect WSL2 SSH"
TASK_NAME = "mlconnect WSL2 port forward"
OLD_GUIDE_RULES = ("WSL2 SSH", "WSL2 TensorBoard", "WSL2 Jupyter", "WSL2 API", "WSL2 MLflow")


def parse_lan(lan: str) -> str:
    """The LAN subnet in CIDR form; one clear error for anything that is not a private subnet."""
    hint = "give your LAN subnet in CIDR form, e.g. --lan 192.168.1.0/24 (see `ipconfig` on Windows)"
    try:
        net = ipaddress.ip_network(lan.strip(), strict=False)
    except ValueError as exc:
        raise UsageError(f"invalid --lan {lan!r}: {exc}", hint) from None
    if "/" not in lan:
        raise UsageError(f"invalid --lan {lan!r}: a subnet needs a prefix length", hint)
    if net.prefixlen < (8 if net.version == 4 else 32) or not net.is_private or net.is_loopback:
        raise UsageError(f"invalid --lan {lan!r}: {net} is not a private LAN subnet (it would admit far more "
                         "than your network)", hint)
    return str(net)


def _check(ssh_port: int, memory: str, processors: int) -> None:
    if not 0 < ssh_port < 65536:
        raise UsageError(f"invalid --ssh-port {ssh_port}", "give a TCP port between 1 and 65535 (2222)")
    if ssh_port in SERVICE_PORTS:
        raise UsageError(f"--ssh-port {ssh_port} is a service port", "use 2222")
    if not re.fullmatch(r"[1-9][0-9]*(MB|GB)", memory):
        raise UsageError(f"invalid --memory {memory!r}", "give a size such as 24GB or 16384MB")
    if not 0 < processors <= 1024:
        raise UsageError(f"invalid --processors {processors}", "give the number of logical processors for WSL2")


def render_wslconfig(memory: str, processors: int, no_idle_timeout: bool, mirrored: bool) -> str:
    lines = [
        "# Copy to %UserProfile%\\.wslconfig, then run `wsl --shutdown` once (written by mlconnect setup windows).",
        "[wsl2]",
        f"memory={memory}",
        f"processors={processors}",
    ]
    if no_idle_timeout:
        lines += ["# Keep the VM (and sshd) running when no Windows process uses WSL.", "vmIdleTimeout=-1"]
    else:
        lines += ["# WSL stops the VM ~60 s after the last Windows-side process exits, and sshd with it.",
                  "# Uncomment to keep it up (or rerun with --no-idle-timeout):",
                  "# vmIdleTimeout=-1"]
    if mirrored:
        lines += ["# Mirrored networking: WSL shares the Windows addresses; no portproxy needed.",
                  "networkingMode=mirrored"]
    else:
        lines += ["localhostForwarding=true"]
    return "\n".join(lines) + "\n"


def render_forward_ports(ssh_port: int, lan: str) -> str:
    services = ", ".join(str(p) for p in SERVICE_PORTS)
    return f"""#Requires -RunAsAdministrator
# Forward the SSH port from this PC to WSL2 (written by mlconnect setup windows).
# Rerun after every WSL restart (the scheduled task does it at logon): the WSL address changes.
# Only SSH is forwarded. TensorBoard, Jupyter, the API and MLflow are reached through SSH tunnels
# from the laptop (`mlconnect tensorboard`, `mlconnect jupyter`, `mlconnect serve`).
# -IncludeServicePorts also forwards {services}; firewall.ps1 -IncludeServicePorts then
# admits them from {lan} only.
param([switch]$IncludeServicePorts, [string]$Distro = "")
$ErrorActionPreference = "Stop"
$sshPort = {ssh_port}
$servicePorts = @({services})

$wslArgs = @()
if ($Distro) {{ $wslArgs = @("-d", $Distro) }}
$wslIp = (& wsl.exe @wslArgs -- hostname -I) -split "\\s+" |
    Where-Object {{ $_ -match "^\\d+\\.\\d+\\.\\d+\\.\\d+$" }} | Select-Object -First 1
if (-not $wslIp) {{
    Write-Error "could not read the WSL2 IP address: is the distro installed and running? (wsl -l -v)"
    exit 1
}}

# SSH: listen on this PC's addresses; firewall.ps1 admits only {lan}.
netsh interface portproxy delete v4tov4 listenport=$sshPort listenaddress=0.0.0.0 2>$null | Out-Null
netsh interface portproxy add v4tov4 listenport=$sshPort listenaddress=0.0.0.0 connectport=$sshPort connectaddress=$wslIp

if ($IncludeServicePorts) {{
    # BEGIN opt-in service ports
    foreach ($p in $servicePorts) {{
        netsh interface portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0 2>$null | Out-Null
        netsh interface portproxy add v4tov4 listenport=$p listenaddress=0.0.0.0 connectport=$p connectaddress=$wslIp
    }}
    # END opt-in service ports
}} else {{
    # Remove service-port forwards an older setup may have left open to the whole network.
    foreach ($p in $servicePorts) {{
        netsh interface portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0 2>$null | Out-Null
    }}
}}

Write-Host "Forwarding port $sshPort to WSL2 at $wslIp"
netsh interface portproxy show v4tov4
"""


def render_firewall(ssh_port: int, lan: str, mirrored: bool) -> str:
    services = ", ".join(str(p) for p in SERVICE_PORTS)
    old = ", ".join(f'"{r}"' for r in OLD_GUIDE_RULES)
    text = f"""#Requires -RunAsAdministrator
# One inbound rule: TCP {ssh_port} (SSH to WSL2), Private profile, from {lan} only
# (written by mlconnect setup windows). Your network must be Private:
#   Get-NetConnectionProfile ; Set-NetConnectionProfile -InterfaceAlias "Wi-Fi" -NetworkCategory Private
param([switch]$IncludeServicePorts)
$ErrorActionPreference = "Stop"
$lan = "{lan}"

Get-NetFirewallRule -DisplayName "{RULE_NAME}" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -DisplayName "{RULE_NAME}" -Direction Inbound -Action Allow -Protocol TCP -LocalPort {ssh_port} -Profile Private -RemoteAddress $lan | Out-Null

Get-NetFirewallRule -DisplayName "mlconnect WSL2 services" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
if ($IncludeServicePorts) {{
    New-NetFirewallRule -DisplayName "mlconnect WSL2 services" -Direction Inbound -Action Allow -Protocol TCP -LocalPort {services} -Profile Private -RemoteAddress $lan | Out-Null
}}

# Rules from the old manual guide opened these ports to every network: disable them (not deleted).
foreach ($name in @({old})) {{
    $rule = Get-NetFirewallRule -DisplayName $name -ErrorAction SilentlyContinue
    if ($rule) {{
        $rule | Disable-NetFirewallRule
        Write-Host "Disabled the old open rule '$name' (remove it with Remove-NetFirewallRule -DisplayName '$name')"
    }}
}}
"""
    if mirrored:
        text += f"""
# Mirrored networking: the Hyper-V firewall filters traffic to WSL as well; admit SSH from {lan} only.
Get-NetFirewallHyperVRule -Name "mlconnect-wsl-ssh" -ErrorAction SilentlyContinue | Remove-NetFirewallHyperVRule
New-NetFirewallHyperVRule -Name "mlconnect-wsl-ssh" -DisplayName "{RULE_NAME} (Hyper-V)" -Direction Inbound -VMCreatorId "{WSL_VM_CREATOR}" -Protocol TCP -LocalPorts {ssh_port} -RemoteAddresses $lan -Action Allow | Out-Null
"""
    text += f'\nGet-NetFirewallRule -DisplayName "{RULE_NAME}" | Get-NetFirewallAddressFilter\n'
    return text


def render_schedule() -> str:
    return f"""#Requires -RunAsAdministrator
# Rerun forward_ports.ps1 at every logon (the WSL IP changes), as you, with admin rights for netsh
# (written by mlconnect setup windows). Remove with: Unregister-ScheduledTask -TaskName "{TASK_NAME}"
$ErrorActionPreference = "Stop"
$script = Join-Path $PSScriptRoot "forward_ports.ps1"
$action = New-ScheduledTaskAction -Execute "powershell.exe" -Argument "-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$script`""
$trigger = New-ScheduledTaskTrigger -AtLogOn -User "$env:USERDOMAIN\\$env:USERNAME"
$principal = New-ScheduledTaskPrincipal -UserId "$env:USERDOMAIN\\$env:USERNAME" -LogonType Interactive -RunLevel Highest
Register-ScheduledTask -TaskName "{TASK_NAME}" -Action $action -Trigger $trigger -Principal $principal -Force | Out-Null
Write-Host "Scheduled task '{TASK_NAME}' runs $script at logon"
"""


def render_readme(ssh_port: int, lan: str, mirrored: bool, no_idle_timeout: bool) -> str:
    steps = [
        "Copy .wslconfig to %UserProfile%\\.wslconfig (merge by hand if you already have one),",
        "   then in PowerShell: wsl --shutdown",
        "In WSL2 Ubuntu, run the command `mlconnect setup client` printed on the laptop:",
        f"   mlconnect setup server --port {ssh_port} --authorized-key \"ssh-ed25519 AAAA... you@laptop\" --apply",
        "   (it sets systemd=true in /etc/wsl.conf; run `wsl --shutdown` once more afterwards)",
        "Open PowerShell as Administrator in this folder and allow these scripts for this window only:",
        "   Set-ExecutionPolicy -Scope Process Bypass",
        f"Run .\\firewall.ps1   (one rule: TCP {ssh_port}, Private profile, from {lan} only)",
    ]
    if mirrored:
        steps += ["Mirrored networking needs no port forwarding: sshd in WSL2 answers on this PC's address."]
    else:
        steps += [f"Run .\\forward_ports.ps1   (forwards only TCP {ssh_port} to the current WSL2 address)",
                  "Run .\\schedule_forwarding.ps1   (reruns forward_ports.ps1 at every logon)"]
    steps += ["Make sure your network is Private: Get-NetConnectionProfile",
              "From the laptop: ssh <name> true, then: mlconnect doctor"]
    numbered, n = [], 0
    for s in steps:
        if s.startswith("   "):
            numbered.append("   " + s)
        else:
            n += 1
            numbered.append(f"{n}. {s}")
    idle = ("vmIdleTimeout=-1 is set: WSL2 keeps running with no Windows window open."
            if no_idle_timeout else
            "WSL2 stops about a minute after the last WSL window closes (vmIdleTimeout), and sshd with it.\n"
            "Uncomment vmIdleTimeout=-1 in .wslconfig (or rerun with --no-idle-timeout) to keep it reachable.")
    undo = [f'Remove-NetFirewallRule -DisplayName "{RULE_NAME}"']
    if mirrored:
        undo.append('Remove-NetFirewallHyperVRule -Name "mlconnect-wsl-ssh"')
    else:
        undo += [f"netsh interface portproxy delete v4tov4 listenport={ssh_port} listenaddress=0.0.0.0",
                 f'Unregister-ScheduledTask -TaskName "{TASK_NAME}"']
    return ("mlconnect: Windows side of the WSL2 GPU box\n"
            "===========================================\n\n"
            "Why only SSH: TensorBoard, Jupyter, the API and MLflow are reached through SSH tunnels\n"
            "(mlconnect tensorboard / jupyter / serve), so nothing but SSH is exposed to the network.\n\n"
            "Order:\n" + "\n".join(numbered) + "\n\n" + idle + "\n\nUndo:\n"
            + "\n".join("   " + u for u in undo) + "\n")


def write_windows_setup(out: Path, *, lan: str, ssh_port: int = 2222, memory: str = "24GB", processors: int = 12,
                        no_idle_timeout: bool = False, mirrored: bool = False) -> list[Path]:
    cidr = parse_lan(lan)
    _check(ssh_port, memory, processors)
    files = {".wslconfig": render_wslconfig(memory, processors, no_idle_timeout, mirrored),
             "firewall.ps1": render_firewall(ssh_port, cidr, mirrored)}
    if not mirrored:
        files["forward_ports.ps1"] = render_forward_ports(ssh_port, cidr)
        files["schedule_forwarding.ps1"] = render_schedule()
    files["README.txt"] = render_readme(ssh_port, cidr, mirrored, no_idle_timeout)
    written = []
    for name, text in files.items():
        path = out / name
        atomic_write_bytes(path, text.replace("\r\n", "\n").replace("\n", "\r\n").encode("ascii"))
        written.append(path)
    return written
