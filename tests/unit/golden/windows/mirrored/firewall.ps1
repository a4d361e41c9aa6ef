#Requires -RunAsAdministrator
# One inbound rule: TCP 2200 (SSH to WSL2), Private profile, from 10.1.0.0/16 only
# (written by mlconnect setup windows).
$ErrorActionPreference = "Stop"
$lan = "10.1.0.0/16"

# A Private-profile rule never matches on a Public network: check that first.
$profiles = @(Get-NetConnectionProfile)
$profiles | Format-Table -AutoSize -Property @("InterfaceAlias", "Name", "NetworkCategory")
if (-not ($profiles | Where-Object { $_.NetworkCategory -eq "Private" })) {
    Write-Error "no network here is Private, so the rule would never admit SSH. Make your LAN Private, then rerun: Set-NetConnectionProfile -InterfaceAlias ""Wi-Fi"" -NetworkCategory Private"
    exit 1
}

Get-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" -Direction Inbound -Action Allow -Protocol TCP -LocalPort 2200 -Profile Private -RemoteAddress $lan | Out-Null
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

# Mirrored mode: sshd in WSL answers on this PC's own addresses. A portproxy listener on 2200
# (NAT mode, an older setup) would take the port first, and the NAT-mode task would re-add it.
netsh interface portproxy delete v4tov4 listenport=2200 listenaddress=0.0.0.0 2>$null | Out-Null
Get-ScheduledTask -TaskName "mlconnect WSL2 port forward" -ErrorAction SilentlyContinue | Unregister-ScheduledTask -Confirm:$false

# The Hyper-V firewall filters traffic into WSL as well: admit SSH from 10.1.0.0/16 only, Private profile.
Get-NetFirewallHyperVRule -Name "mlconnect-wsl-ssh" -ErrorAction SilentlyContinue | Remove-NetFirewallHyperVRule
New-NetFirewallHyperVRule -Name "mlconnect-wsl-ssh" -DisplayName "mlconnect WSL2 SSH (Hyper-V)" -Direction Inbound -VMCreatorId "{40E0AC32-46A5-438A-A0B2-2B479E8F2E90}" -Protocol TCP -LocalPorts 2200 -RemoteAddresses $lan -Profiles Private -Action Allow | Out-Null

Get-NetFirewallRule -DisplayName "mlconnect WSL2 SSH" | Get-NetFirewallAddressFilter
