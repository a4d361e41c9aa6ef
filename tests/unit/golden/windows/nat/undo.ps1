#Requires -RunAsAdministrator
# Undo everything mlconnect setup windows and setup server set up (written by mlconnect setup windows).
param([string]$Distro = "")
$ErrorActionPreference = "Continue"
$wsl = Join-Path $env:ProgramFiles "WSL\wsl.exe"
if (-not (Test-Path $wsl)) { $wsl = "wsl.exe" }
$env:WSL_UTF8 = "1"
$wslArgs = @()
if ($Distro) { $wslArgs = @("-d", $Distro) }

foreach ($t in @("mlconnect WSL2 keep-alive", "mlconnect WSL2 port forward")) {
    if (Get-ScheduledTask -TaskName $t -ErrorAction SilentlyContinue) {
        Stop-ScheduledTask -TaskName $t
        Unregister-ScheduledTask -TaskName $t -Confirm:$false
        Write-Host "Removed the scheduled task '$t'"
    }
}
Get-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
Get-NetFirewallRule -DisplayName "mlconnect WSL2 services" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
Get-NetFirewallHyperVRule -Name "mlconnect-wsl-ssh" -ErrorAction SilentlyContinue | Remove-NetFirewallHyperVRule
# The SSH forward, and the service-port forwards of older versions' -IncludeServicePorts.
foreach ($p in @(2222, 6006, 8888, 8000, 5000)) {
    netsh interface portproxy delete v4tov4 listenport=$p listenaddress=0.0.0.0 2>$null | Out-Null
}
Write-Host "Removed the firewall rules and port forwards"

# .wslconfig as it was before mlconnect first changed it (an empty backup: there was none).
$path = Join-Path $env:USERPROFILE ".wslconfig"
$first = Get-ChildItem -Path $env:USERPROFILE -Filter ".wslconfig.mlconnect-bak-*" -Force -ErrorAction SilentlyContinue | Sort-Object Name | Select-Object -First 1
if ($first -and $first.Length -eq 0) {
    Remove-Item $path -ErrorAction SilentlyContinue
    Write-Host "Removed $path (there was none before)"
} elseif ($first) {
    Copy-Item $first.FullName $path -Force
    Write-Host "Restored $path from $($first.Name)"
}

# In WSL, as root: the sshd drop-in goes, /etc/wsl.conf comes back from its first backup.
& $wsl @wslArgs -u root --exec sh -c 'rm -f /etc/ssh/sshd_config.d/00-mlconnect.conf /etc/ssh/sshd_config.d/00-mlconnect.conf.bak-*; for b in $(ls -1 /etc/wsl.conf.bak-* 2>/dev/null | sort | head -n 1); do if test -s $b; then cp -p $b /etc/wsl.conf; else rm -f /etc/wsl.conf; fi; done; systemctl restart ssh 2>/dev/null || service ssh restart'
Write-Host "The old guide's rules stay disabled (they were open to every network): Enable-NetFirewallRule -DisplayName <name> turns one back on."
Write-Host "Now run: wsl --shutdown"
