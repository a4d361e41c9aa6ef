#Requires -RunAsAdministrator
# NAT mode: forward TCP 2222 from this PC to the distro's eth0 address (written by mlconnect
# setup windows). The address changes whenever WSL restarts; keepalive.ps1 (the scheduled task)
# reruns this each time it starts the distro. firewall.ps1 admits 192.168.1.0/24 only.
# TensorBoard, Jupyter, the API and MLflow are not forwarded: they bind 127.0.0.1 in WSL and are
# reached through SSH tunnels (`mlconnect tensorboard`, `mlconnect jupyter`, `mlconnect serve`).
param([string]$Distro = "")
$ErrorActionPreference = "Stop"
$sshPort = 2222
$wsl = Join-Path $env:ProgramFiles "WSL\wsl.exe"
if (-not (Test-Path $wsl)) { $wsl = "wsl.exe" }
$env:WSL_UTF8 = "1"
$wslArgs = @()
if ($Distro) { $wslArgs = @("-d", $Distro) }

# eth0's IPv4, not `hostname -I` (whose first word can be a docker or VPN address).
$out = (& $wsl @wslArgs --exec ip -4 -o addr show eth0) -join " "
if ($out -notmatch "inet (\d+\.\d+\.\d+\.\d+)/") {
    Write-Error "could not read eth0's address in WSL ('$out'): is the distro installed? (wsl -l -v)"
    exit 1
}
$wslIp = $Matches[1]

netsh interface portproxy delete v4tov4 listenport=$sshPort listenaddress=0.0.0.0 2>$null | Out-Null
netsh interface portproxy add v4tov4 listenport=$sshPort listenaddress=0.0.0.0 connectport=$sshPort connectaddress=$wslIp
# Service-port forwards older versions made (open to the network, and nothing listens there).
foreach ($p in @(6006, 8888, 8000, 5000)) {
    netsh interface portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0 2>$null | Out-Null
}
Write-Host "Forwarding port $sshPort to WSL2 at $wslIp"
