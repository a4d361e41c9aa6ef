# ruff: noqa: E501  (generated PowerShell commands stay on one line each, as a person would copy them)
"""The PowerShell scripts of `mlconnect setup windows` (rendered as text; windows.py writes them).

Every script names the Windows objects it creates with the constants below, and ``undo.ps1``
removes exactly those, so a rule, proxy or task added here must be added to ``render_undo`` too
(tests/unit/test_setup_windows.py checks that). ``wsl.exe`` is taken from ``C:\\Program Files\\WSL``
when present: the Store app's ``wsl.exe`` alias is missing in a task that runs before logon.
"""

from __future__ import annotations

from mlconnect.wsl import TASK_NAME

RULE_NAME = "mlconnect WSL2 SSH"
SERVICES_RULE = "mlconnect WSL2 services"  # only older mlconnect versions made it (-IncludeServicePorts)
HYPERV_RULE = "mlconnect-wsl-ssh"
OLD_TASK_NAME = "mlconnect WSL2 port forward"  # the NAT-only logon task of older versions
OLD_SERVICE_PORTS = (6006, 8888, 8000, 5000)  # forwarded by older versions' -IncludeServicePorts
WSL_VM_CREATOR = "{40E0AC32-46A5-438A-A0B2-2B479E8F2E90}"  # Hyper-V firewall id of WSL
OLD_GUIDE_RULES = ("WSL2 SSH", "WSL2 TensorBoard", "WSL2 Jupyter", "WSL2 API", "WSL2 MLflow")
BACKUP_SUFFIX = ".mlconnect-bak-"  # %UserProfile%\.wslconfig.mlconnect-bak-<stamp>; an empty one = there was none

_WSL_EXE = """$wsl = Join-Path $env:ProgramFiles "WSL\\wsl.exe"
if (-not (Test-Path $wsl)) { $wsl = "wsl.exe" }
$env:WSL_UTF8 = "1"
$wslArgs = @()
if ($Distro) { $wslArgs = @("-d", $Distro) }"""


def render_wslconfig(memory: str | None, processors: int | None, no_idle_timeout: bool, mirrored: bool) -> str:
    """wslconfig.ps1: merge mlconnect's keys into %UserProfile%\\.wslconfig, after a backup."""
    mem = (f'$memory = "{memory}"' if memory else
           "$memory = \"$([math]::Max(2, [math]::Floor($ramGB * 3 / 4)))GB\"   # 3/4 of this PC's RAM")
    cpu = (f"$processors = {processors}" if processors else
           "$processors = [math]::Max(1, [math]::Floor($cpus * 3 / 4))   # 3/4 of this PC's logical processors")
    keys = ['Set-IniValue $lines "wsl2" "memory" $memory',
            'Set-IniValue $lines "wsl2" "processors" "$processors"',
            f'Set-IniValue $lines "wsl2" "networkingMode" "{"mirrored" if mirrored else "nat"}"']
    if not mirrored:
        keys.append('Set-IniValue $lines "wsl2" "localhostForwarding" "true"')
    if no_idle_timeout:
        keys += ['# The distro stays up with no Windows-side WSL program (WSL 2.5.8+ reads this key).',
                 'Set-IniValue $lines "general" "instanceIdleTimeout" "-1"',
                 '# The empty VM stays up too (it only idles once every distro has stopped).',
                 'Set-IniValue $lines "wsl2" "vmIdleTimeout" "-1"']
    body = "\n".join(keys)
    return f"""# Merge mlconnect's settings into %UserProfile%\\.wslconfig, keeping every other line
# (written by mlconnect setup windows). The old file is kept as .wslconfig{BACKUP_SUFFIX}<time>;
# undo.ps1 restores the first such backup. Then run: wsl --shutdown
$ErrorActionPreference = "Stop"
$path = Join-Path $env:USERPROFILE ".wslconfig"
$cs = Get-CimInstance Win32_ComputerSystem
$ramGB = [math]::Floor($cs.TotalPhysicalMemory / 1073741824)   # bytes -> GiB
$cpus = [int]$cs.NumberOfLogicalProcessors
{mem}
{cpu}

function Set-IniValue([System.Collections.Generic.List[string]]$Lines, [string]$Section, [string]$Key, [string]$Value) {{
    $start = -1
    $end = $Lines.Count
    for ($i = 0; $i -lt $Lines.Count; $i++) {{
        if ($Lines[$i].Trim() -match '^\\[(.+)\\]$') {{
            if ($start -ge 0) {{ $end = $i; break }}
            if ($Matches[1].Trim() -ieq $Section) {{ $start = $i }}
        }}
    }}
    if ($start -lt 0) {{
        if ($Lines.Count -gt 0 -and $Lines[$Lines.Count - 1].Trim() -ne "") {{ $Lines.Add("") }}
        $Lines.Add("[$Section]")
        $Lines.Add("$Key=$Value")
        return
    }}
    for ($i = $start + 1; $i -lt $end; $i++) {{
        if ($Lines[$i] -match ("^\\s*" + [regex]::Escape($Key) + "\\s*=")) {{ $Lines[$i] = "$Key=$Value"; return }}
    }}
    $Lines.Insert($start + 1, "$Key=$Value")
}}

$lines = New-Object System.Collections.Generic.List[string]
$old = ""
if (Test-Path $path) {{
    $old = [IO.File]::ReadAllText($path)
    foreach ($l in [IO.File]::ReadAllLines($path)) {{ $lines.Add($l) }}
}}
{body}
$new = ($lines -join "`r`n") + "`r`n"
if ($new -eq $old) {{
    Write-Host "$path already has these settings"
    exit 0
}}
$backup = "$path{BACKUP_SUFFIX}$(Get-Date -Format yyyyMMdd-HHmmss)"
if (Test-Path $path) {{ Copy-Item $path $backup }} else {{ New-Item -ItemType File -Path $backup | Out-Null }}
[IO.File]::WriteAllText($path, $new)
Write-Host "Wrote $path (backup: $backup); memory=$memory processors=$processors"
Write-Host "Now run: wsl --shutdown   (settings apply when WSL starts again)"
"""


def render_forward_ports(ssh_port: int, lan: str) -> str:
    services = " ".join(str(p) for p in OLD_SERVICE_PORTS)
    return f"""#Requires -RunAsAdministrator
# NAT mode: forward TCP {ssh_port} from this PC to the distro's eth0 address (written by mlconnect
# setup windows). The address changes whenever WSL restarts; keepalive.ps1 (the scheduled task)
# reruns this each time it starts the distro. firewall.ps1 admits {lan} only.
# TensorBoard, Jupyter, the API and MLflow are not forwarded: they bind 127.0.0.1 in WSL and are
# reached through SSH tunnels (`mlconnect tensorboard`, `mlconnect jupyter`, `mlconnect serve`).
param([string]$Distro = "")
$ErrorActionPreference = "Stop"
$sshPort = {ssh_port}
{_WSL_EXE}

# eth0's IPv4, not `hostname -I` (whose first word can be a docker or VPN address).
$out = (& $wsl @wslArgs --exec ip -4 -o addr show eth0) -join " "
if ($out -notmatch "inet (\\d+\\.\\d+\\.\\d+\\.\\d+)/") {{
    Write-Error "could not read eth0's address in WSL ('$out'): is the distro installed? (wsl -l -v)"
    exit 1
}}
$wslIp = $Matches[1]

netsh interface portproxy delete v4tov4 listenport=$sshPort listenaddress=0.0.0.0 2>$null | Out-Null
netsh interface portproxy add v4tov4 listenport=$sshPort listenaddress=0.0.0.0 connectport=$sshPort connectaddress=$wslIp
# Service-port forwards older versions made (open to the network, and nothing listens there).
foreach ($p in @({services.replace(" ", ", ")})) {{
    netsh interface portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0 2>$null | Out-Null
}}
Write-Host "Forwarding port $sshPort to WSL2 at $wslIp"
"""


def render_firewall(ssh_port: int, lan: str, mirrored: bool) -> str:
    old = ", ".join(f'"{r}"' for r in OLD_GUIDE_RULES)
    text = f"""#Requires -RunAsAdministrator
# One inbound rule: TCP {ssh_port} (SSH to WSL2), Private profile, from {lan} only
# (written by mlconnect setup windows).
$ErrorActionPreference = "Stop"
$lan = "{lan}"

# A Private-profile rule never matches on a Public network: check that first.
$profiles = @(Get-NetConnectionProfile)
$profiles | Format-Table -AutoSize -Property @("InterfaceAlias", "Name", "NetworkCategory")
if (-not ($profiles | Where-Object {{ $_.NetworkCategory -eq "Private" }})) {{
    Write-Error "no network here is Private, so the rule would never admit SSH. Make your LAN Private, then rerun: Set-NetConnectionProfile -InterfaceAlias ""Wi-Fi"" -NetworkCategory Private"
    exit 1
}}

Get-NetFirewallRule -DisplayName "{RULE_NAME}" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -DisplayName "{RULE_NAME}" -Direction Inbound -Action Allow -Protocol TCP -LocalPort {ssh_port} -Profile Private -RemoteAddress $lan | Out-Null
# Older versions could open TensorBoard/Jupyter/API/MLflow ports (-IncludeServicePorts): gone.
Get-NetFirewallRule -DisplayName "{SERVICES_RULE}" -ErrorAction SilentlyContinue | Remove-NetFirewallRule

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
# Mirrored mode: sshd in WSL answers on this PC's own addresses. A portproxy listener on {ssh_port}
# (NAT mode, an older setup) would take the port first, and the NAT-mode task would re-add it.
netsh interface portproxy delete v4tov4 listenport={ssh_port} listenaddress=0.0.0.0 2>$null | Out-Null
Get-ScheduledTask -TaskName "{OLD_TASK_NAME}" -ErrorAction SilentlyContinue | Unregister-ScheduledTask -Confirm:$false

# The Hyper-V firewall filters traffic into WSL as well: admit SSH from {lan} only, Private profile.
Get-NetFirewallHyperVRule -Name "{HYPERV_RULE}" -ErrorAction SilentlyContinue | Remove-NetFirewallHyperVRule
New-NetFirewallHyperVRule -Name "{HYPERV_RULE}" -DisplayName "{RULE_NAME} (Hyper-V)" -Direction Inbound -VMCreatorId "{WSL_VM_CREATOR}" -Protocol TCP -LocalPorts {ssh_port} -RemoteAddresses $lan -Profiles Private -Action Allow | Out-Null
"""
    text += f'\nGet-NetFirewallRule -DisplayName "{RULE_NAME}" | Get-NetFirewallAddressFilter\n'
    return text


def render_keepalive(mirrored: bool) -> str:
    forward = ("" if mirrored else """    try {
        & (Join-Path $PSScriptRoot "forward_ports.ps1") -Distro $Distro
    } catch {
        Write-Warning "forward_ports.ps1 failed: $_"
    }
""")
    return f"""# The scheduled task's body (written by mlconnect setup windows): start the distro,
# {"" if mirrored else "point the SSH port forward at its new address, "}then hold it up with a Windows-side
# `wsl.exe ... sleep infinity`. WSL stops a distro ~15 s after its last Windows-side process
# exits; sshd, systemd services and training runs inside do not count. When WSL stops anyway
# (wsl --shutdown, an update), the loop starts it again.
param([string]$Distro = "")
$ErrorActionPreference = "Continue"
{_WSL_EXE}
while ($true) {{
{forward}    & $wsl @wslArgs --exec sleep infinity
    Start-Sleep -Seconds 10
}}
"""


def render_schedule(at_startup: bool, mirrored: bool) -> str:
    start_trigger = ("\n# --at-startup: also before anyone signs in. That needs your Windows password, stored by Task Scheduler.\n"
                     "$triggers += New-ScheduledTaskTrigger -AtStartup") if at_startup else ""
    register = ("""$cred = Get-Credential -UserName $user -Message "Your Windows password, stored by Task Scheduler so the task can start WSL before you sign in"
$password = $cred.GetNetworkCredential().Password
Register-ScheduledTask -TaskName $taskName -Action $action -Trigger $triggers -Settings $settings -User $user -Password $password -RunLevel Highest -Force | Out-Null"""
                if at_startup else
                """$principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Highest
Register-ScheduledTask -TaskName $taskName -Action $action -Trigger $triggers -Settings $settings -Principal $principal -Force | Out-Null""")
    want = "mirrored" if mirrored else "nat"
    return f"""#Requires -RunAsAdministrator
# Register the task that starts WSL and keeps it running (written by mlconnect setup windows):
# at logon{" and at startup" if at_startup else ""}, as you, with admin rights (netsh needs them), on battery too, with no time limit.
# Remove with undo.ps1.
param([string]$Distro = "")
$ErrorActionPreference = "Stop"
$taskName = "{TASK_NAME}"
$user = "$env:USERDOMAIN\\$env:USERNAME"
$script = Join-Path $PSScriptRoot "keepalive.ps1"
$arguments = "-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$script`""
if ($Distro) {{ $arguments += " -Distro `"$Distro`"" }}
{_WSL_EXE}

# The NAT-only task of older versions is replaced by this one.
Get-ScheduledTask -TaskName "{OLD_TASK_NAME}" -ErrorAction SilentlyContinue | Unregister-ScheduledTask -Confirm:$false
Get-ScheduledTask -TaskName $taskName -ErrorAction SilentlyContinue | Stop-ScheduledTask

$action = New-ScheduledTaskAction -Execute "powershell.exe" -Argument $arguments -WorkingDirectory $PSScriptRoot
$triggers = @(New-ScheduledTaskTrigger -AtLogOn -User $user){start_trigger}
$settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -ExecutionTimeLimit (New-TimeSpan -Seconds 0) -MultipleInstances IgnoreNew -StartWhenAvailable -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1)
{register}
Start-ScheduledTask -TaskName $taskName
Write-Host "Scheduled task '$taskName' registered and started; it runs $script"

$ErrorActionPreference = "Continue"   # from here on it only reports
Start-Sleep -Seconds 15
Write-Host "Running distros (wsl.exe --list --running):"
& $wsl --list --running
$mode = (& $wsl @wslArgs --exec wslinfo --networking-mode 2>$null) -join ""
if (-not $mode) {{
    Write-Warning "could not read the networking mode (wslinfo needs WSL 2.0+): run wsl --update"
}} elseif ($mode.Trim() -ne "{want}") {{
    Write-Warning "WSL runs in '$($mode.Trim())' networking mode, not '{want}'. Mirrored needs Windows 11 22H2+ and WSL falls back to NAT without saying so: rerun mlconnect setup windows {"without" if mirrored else "with"} --mirrored to match, then these scripts again."
}} else {{
    Write-Host "Networking mode in effect: {want}"
}}
"""


def render_undo(ssh_port: int) -> str:
    ports = ", ".join(str(p) for p in (ssh_port, *OLD_SERVICE_PORTS))
    # Inside WSL as root: no double quotes (Windows PowerShell 5.1 does not escape them for wsl.exe).
    sh = ("rm -f /etc/ssh/sshd_config.d/00-mlconnect.conf /etc/ssh/sshd_config.d/00-mlconnect.conf.bak-*; "
          "for b in $(ls -1 /etc/wsl.conf.bak-* 2>/dev/null | sort | head -n 1); do "
          "if test -s $b; then cp -p $b /etc/wsl.conf; else rm -f /etc/wsl.conf; fi; done; "
          "systemctl restart ssh 2>/dev/null || service ssh restart")
    return f"""#Requires -RunAsAdministrator
# Undo everything mlconnect setup windows and setup server set up (written by mlconnect setup windows).
param([string]$Distro = "")
$ErrorActionPreference = "Continue"
{_WSL_EXE}

foreach ($t in @("{TASK_NAME}", "{OLD_TASK_NAME}")) {{
    if (Get-ScheduledTask -TaskName $t -ErrorAction SilentlyContinue) {{
        Stop-ScheduledTask -TaskName $t
        Unregister-ScheduledTask -TaskName $t -Confirm:$false
        Write-Host "Removed the scheduled task '$t'"
    }}
}}
Get-NetFirewallRule -DisplayName "{RULE_NAME}" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
Get-NetFirewallRule -DisplayName "{SERVICES_RULE}" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
Get-NetFirewallHyperVRule -Name "{HYPERV_RULE}" -ErrorAction SilentlyContinue | Remove-NetFirewallHyperVRule
# The SSH forward, and the service-port forwards of older versions' -IncludeServicePorts.
foreach ($p in @({ports})) {{
    netsh interface portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0 2>$null | Out-Null
}}
Write-Host "Removed the firewall rules and port forwards"

# .wslconfig as it was before mlconnect first changed it (an empty backup: there was none).
$path = Join-Path $env:USERPROFILE ".wslconfig"
$first = Get-ChildItem -Path $env:USERPROFILE -Filter ".wslconfig{BACKUP_SUFFIX}*" -Force -ErrorAction SilentlyContinue | Sort-Object Name | Select-Object -First 1
if ($first -and $first.Length -eq 0) {{
    Remove-Item $path -ErrorAction SilentlyContinue
    Write-Host "Removed $path (there was none before)"
}} elseif ($first) {{
    Copy-Item $first.FullName $path -Force
    Write-Host "Restored $path from $($first.Name)"
}}

# In WSL, as root: the sshd drop-in goes, /etc/wsl.conf comes back from its first backup.
& $wsl @wslArgs -u root --exec sh -c '{sh}'
Write-Host "The old guide's rules stay disabled (they were open to every network): Enable-NetFirewallRule -DisplayName <name> turns one back on."
Write-Host "Now run: wsl --shutdown"
"""
