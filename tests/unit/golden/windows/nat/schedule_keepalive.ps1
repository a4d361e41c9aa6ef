#Requires -RunAsAdministrator
# Register the task that starts WSL and keeps it running (written by mlconnect setup windows):
# at logon, as you, with admin rights (netsh needs them), on battery too, with no time limit.
# Remove with undo.ps1.
param([string]$Distro = "")
$ErrorActionPreference = "Stop"
$taskName = "mlconnect WSL2 keep-alive"
$user = "$env:USERDOMAIN\$env:USERNAME"
$script = Join-Path $PSScriptRoot "keepalive.ps1"
$arguments = "-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$script`""
if ($Distro) { $arguments += " -Distro `"$Distro`"" }
$wsl = Join-Path $env:ProgramFiles "WSL\wsl.exe"
if (-not (Test-Path $wsl)) { $wsl = "wsl.exe" }
$env:WSL_UTF8 = "1"
$wslArgs = @()
if ($Distro) { $wslArgs = @("-d", $Distro) }

# The NAT-only task of older versions is replaced by this one.
Get-ScheduledTask -TaskName "mlconnect WSL2 port forward" -ErrorAction SilentlyContinue | Unregister-ScheduledTask -Confirm:$false
Get-ScheduledTask -TaskName $taskName -ErrorAction SilentlyContinue | Stop-ScheduledTask

$action = New-ScheduledTaskAction -Execute "powershell.exe" -Argument $arguments -WorkingDirectory $PSScriptRoot
$triggers = @(New-ScheduledTaskTrigger -AtLogOn -User $user)
$settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -ExecutionTimeLimit (New-TimeSpan -Seconds 0) -MultipleInstances IgnoreNew -StartWhenAvailable -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1)
$principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Highest
Register-ScheduledTask -TaskName $taskName -Action $action -Trigger $triggers -Settings $settings -Principal $principal -Force | Out-Null
Start-ScheduledTask -TaskName $taskName
Write-Host "Scheduled task '$taskName' registered and started; it runs $script"

$ErrorActionPreference = "Continue"   # from here on it only reports
Start-Sleep -Seconds 15
Write-Host "Running distros (wsl.exe --list --running):"
& $wsl --list --running
$mode = (& $wsl @wslArgs --exec wslinfo --networking-mode 2>$null) -join ""
if (-not $mode) {
    Write-Warning "could not read the networking mode (wslinfo needs WSL 2.0+): run wsl --update"
} elseif ($mode.Trim() -ne "nat") {
    Write-Warning "WSL runs in '$($mode.Trim())' networking mode, not 'nat'. Mirrored needs Windows 11 22H2+ and WSL falls back to NAT without saying so: rerun mlconnect setup windows with --mirrored to match, then these scripts again."
} else {
    Write-Host "Networking mode in effect: nat"
}
