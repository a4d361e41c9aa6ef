# Merge mlconnect's settings into %UserProfile%\.wslconfig, keeping every other line
# (written by mlconnect setup windows). The old file is kept as .wslconfig.mlconnect-bak-<time>;
# undo.ps1 restores the first such backup. Then run: wsl --shutdown
$ErrorActionPreference = "Stop"
$path = Join-Path $env:USERPROFILE ".wslconfig"
$cs = Get-CimInstance Win32_ComputerSystem
$ramGB = [math]::Floor($cs.TotalPhysicalMemory / 1073741824)   # bytes -> GiB
$cpus = [int]$cs.NumberOfLogicalProcessors
$memory = "24GB"
$processors = 12

function Set-IniValue([System.Collections.Generic.List[string]]$Lines, [string]$Section, [string]$Key, [string]$Value) {
    $start = -1
    $end = $Lines.Count
    for ($i = 0; $i -lt $Lines.Count; $i++) {
        if ($Lines[$i].Trim() -match '^\[(.+)\]$') {
            if ($start -ge 0) { $end = $i; break }
            if ($Matches[1].Trim() -ieq $Section) { $start = $i }
        }
    }
    if ($start -lt 0) {
        if ($Lines.Count -gt 0 -and $Lines[$Lines.Count - 1].Trim() -ne "") { $Lines.Add("") }
        $Lines.Add("[$Section]")
        $Lines.Add("$Key=$Value")
        return
    }
    for ($i = $start + 1; $i -lt $end; $i++) {
        if ($Lines[$i] -match ("^\s*" + [regex]::Escape($Key) + "\s*=")) { $Lines[$i] = "$Key=$Value"; return }
    }
    $Lines.Insert($start + 1, "$Key=$Value")
}

$lines = New-Object System.Collections.Generic.List[string]
$old = ""
if (Test-Path $path) {
    $old = [IO.File]::ReadAllText($path)
    foreach ($l in [IO.File]::ReadAllLines($path)) { $lines.Add($l) }
}
Set-IniValue $lines "wsl2" "memory" $memory
Set-IniValue $lines "wsl2" "processors" "$processors"
Set-IniValue $lines "wsl2" "networkingMode" "mirrored"
# The distro stays up with no Windows-side WSL program (WSL 2.5.8+ reads this key).
Set-IniValue $lines "general" "instanceIdleTimeout" "-1"
# The empty VM stays up too (it only idles once every distro has stopped).
Set-IniValue $lines "wsl2" "vmIdleTimeout" "-1"
$new = ($lines -join "`r`n") + "`r`n"
if ($new -eq $old) {
    Write-Host "$path already has these settings"
    exit 0
}
$backup = "$path.mlconnect-bak-$(Get-Date -Format yyyyMMdd-HHmmss)"
if (Test-Path $path) { Copy-Item $path $backup } else { New-Item -ItemType File -Path $backup | Out-Null }
[IO.File]::WriteAllText($path, $new)
Write-Host "Wrote $path (backup: $backup); memory=$memory processors=$processors"
Write-Host "Now run: wsl --shutdown   (settings apply when WSL starts again)"
