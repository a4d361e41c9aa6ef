# The scheduled task's body (written by mlconnect setup windows): start the distro,
# point the SSH port forward at its new address, then hold it up with a Windows-side
# `wsl.exe ... sleep infinity`. WSL stops a distro ~15 s after its last Windows-side process
# exits; sshd, systemd services and training runs inside do not count. When WSL stops anyway
# (wsl --shutdown, an update), the loop starts it again.
param([string]$Distro = "")
$ErrorActionPreference = "Continue"
$wsl = Join-Path $env:ProgramFiles "WSL\wsl.exe"
if (-not (Test-Path $wsl)) { $wsl = "wsl.exe" }
$env:WSL_UTF8 = "1"
$wslArgs = @()
if ($Distro) { $wslArgs = @("-d", $Distro) }
while ($true) {
    try {
        & (Join-Path $PSScriptRoot "forward_ports.ps1") -Distro $Distro
    } catch {
        Write-Warning "forward_ports.ps1 failed: $_"
    }
    & $wsl @wslArgs --exec sleep infinity
    Start-Sleep -Seconds 10
}
