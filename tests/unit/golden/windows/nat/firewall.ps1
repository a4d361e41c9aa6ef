#Requires -RunAsAdministrator
# One inbound rule: TCP 2222 (SSH to WSL2), Private profile, from 192.168.1.0/24 only
# (written by mlconnect setup windows).
$ErrorActionPreference = "Stop"
$lan = "192.168.1.0/24"

# A Private-profile rule never matches on a Public network: check that first.
$profiles = @(Get-NetConnectionProfile)
$profiles | Format-Table -AutoSize -Property @("InterfaceAlias", "Name", "NetworkCategory")
if (-not ($profiles | Where-Object { $_.NetworkCategory -eq "Private" })) {
    Write-Error "no network here is Private, so the rule would never admit SSH. Make your LAN Private, then rerun: Set-NetConnectionProfile -InterfaceAlias ""Wi-Fi"" -NetworkCategory Private"
    exit 1
}

Get-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" -Direction Inbound -Action Allow -Protocol TCP -LocalPort 2222 -Profile Private -RemoteAddress $lan | Out-Null
# Older versions could open TensorBoard/Jupyter/API/MLflow ports (-IncludeServicePorts): gone.
Get-NetFirewallRule -DisplayName "mlconnect WSL2 services" -ErrorAction SilentlyContinue | Remove-NetFirewallRule

# Rules from the old manual guide opened these ports to every network: disable them (not deleted).
foreach ($name in @("WSL2 SSH", "WSL2 TensorBoard", "WSL2 Jupyter", "WSL2 API", "WSL2 MLflow")) {
    $rule = Get-NetFirewallRule -DisplayName $name -ErrorAction SilentlyContinue
    if ($rule) {
        $rule | Disable-NetFirewallRule
        Write-Host "Disabled the old open rule '$name' (remove it with Remove-NetFirewallRule -DisplayName '$name')"
    }
}

Get-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" | Get-NetFirewallAddressFilter
