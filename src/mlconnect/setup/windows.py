"""`mlconnect setup windows`: the Windows side of a WSL2 GPU box, as scripts a person reads and runs.

What keeps the box reachable, and why each piece is there:

- WSL stops a distro ~15 s after the last Windows-side WSL program exits, whatever runs inside
  (sshd, systemd, a training run). A scheduled task (``keepalive.ps1``) starts the distro at
  logon (and, with ``--at-startup``, at boot before anyone signs in) and holds it up with a
  hidden ``wsl.exe --exec sleep infinity``. ``--no-idle-timeout`` also writes ``[general]
  instanceIdleTimeout=-1`` (the distro; read by WSL 2.5.8+) and ``[wsl2] vmIdleTimeout=-1``
  (the empty VM). Signing out of Windows still ends that user's WSL: lock the screen instead.
- NAT mode: only the SSH port is forwarded, to the distro's eth0 address, refreshed by the same
  task each time it starts the distro. Mirrored mode (Windows 11 22H2+): no forward; the script
  removes any old one (it would hold the port), and the Hyper-V firewall gets its own rule.
- One firewall rule, SSH port only, Private profile, ``-RemoteAddress <LAN CIDR>``. TensorBoard,
  Jupyter, the API and MLflow bind 127.0.0.1 in WSL and are reached through SSH tunnels.
- ``undo.ps1`` removes every rule, forward and task, and restores ``.wslconfig`` and
  ``/etc/wsl.conf`` from their first backups.

Scripts are ASCII with CRLF line ends (Windows PowerShell 5.1 reads BOM-less files as ANSI).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from mlconnect.errors import UsageError
from mlconnect.fileio import atomic_write_bytes
from mlconnect.setup import windows_scripts as ps
from mlconnect.wsl import TASK_NAME

# What `setup windows` prints and README.txt says, so the two never drift apart.
KEEPALIVE_NOTES = (
    f"The box stays up while the scheduled task '{TASK_NAME}' runs: it starts at logon and holds the "
    "distro (sshd and your runs) up with no terminal open.",
    "Lock the screen (Win+L) when you leave; do not sign out: signing out ends your WSL, runs included.",
    "Sleep and hibernate pause Windows and WSL with it: runs freeze and SSH drops until the PC wakes. For long "
    "runs: powercfg /change standby-timeout-ac 0 and powercfg /change hibernate-timeout-ac 0 (plugged in).",
    "Check it: `wsl.exe --list --running` in Windows, and `mlconnect doctor` on the laptop.",
)
STARTUP_NOTE = ("--at-startup: the task also starts WSL at boot, before anyone signs in (it asks for your "
                "Windows password once, stored by Task Scheduler).")
NO_STARTUP_NOTE = ("After a reboot nothing runs until you sign in once (then lock the screen); "
                   "--at-startup starts WSL at boot instead.")
IDLE_NOTE = ("--no-idle-timeout: .wslconfig gets [general] instanceIdleTimeout=-1 (the distro; WSL 2.5.8+) and "
             "[wsl2] vmIdleTimeout=-1 (the VM), so WSL stays up even when the task is not running.")
NO_IDLE_NOTE = ("Only the task holds WSL up: rerun with --no-idle-timeout to also write instanceIdleTimeout=-1 "
                "and vmIdleTimeout=-1 to .wslconfig (WSL 2.5.8+ reads the first).")


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


def _check(ssh_port: int, memory: str | None, processors: int | None, distro: str) -> None:
    if not 0 < ssh_port < 65536:
        raise UsageError(f"invalid --ssh-port {ssh_port}", "give a TCP port between 1 and 65535 (2222)")
    if ssh_port in ps.OLD_SERVICE_PORTS:
        raise UsageError(f"--ssh-port {ssh_port} is a service port", "use 2222")
    if memory is not None and not re.fullmatch(r"[1-9][0-9]*(MB|GB)", memory):
        raise UsageError(f"invalid --memory {memory!r}", "give a size such as 24GB or 16384MB, or leave it out "
                         "(3/4 of the PC's RAM)")
    if processors is not None and not 0 < processors <= 1024:
        raise UsageError(f"invalid --processors {processors}", "give the number of logical processors for WSL2, "
                         "or leave it out (3/4 of the PC's)")
    if distro and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", distro):
        raise UsageError(f"invalid --distro {distro!r}", "give the name `wsl -l -v` shows, e.g. Ubuntu-24.04")


def notes(*, at_startup: bool, no_idle_timeout: bool) -> list[str]:
    """What keeps the box up, what does not, and how to check: printed by the CLI and in README.txt."""
    return [*KEEPALIVE_NOTES, STARTUP_NOTE if at_startup else NO_STARTUP_NOTE,
            IDLE_NOTE if no_idle_timeout else NO_IDLE_NOTE]


def render_readme(ssh_port: int, lan: str, *, mirrored: bool, no_idle_timeout: bool, at_startup: bool) -> str:
    steps = [
        "Open PowerShell as Administrator in this folder and allow these scripts for this window only:",
        "   Set-ExecutionPolicy -Scope Process Bypass",
        "Run .\\wslconfig.ps1   (merges mlconnect's keys into %UserProfile%\\.wslconfig; backup kept)",
        "In WSL2 Ubuntu, install the sshd drop-in (the command `mlconnect setup client` printed), as root:",
        f"   sudo \"$(command -v mlconnect)\" setup server --port {ssh_port} --authorized-key \"ssh-ed25519 AAAA... "
        "you@laptop\" --apply",
        "   (it also sets [boot] systemd=true in /etc/wsl.conf, so sshd starts with the distro)",
        "Back in PowerShell: wsl --shutdown   (both config files apply when WSL starts again)",
        "Make sure your LAN is Private (firewall.ps1 stops if none is):",
        "   Get-NetConnectionProfile ; Set-NetConnectionProfile -InterfaceAlias \"Wi-Fi\" -NetworkCategory Private",
        f"Run .\\firewall.ps1   (one rule: TCP {ssh_port}, Private profile, from {lan} only"
        + ("; Hyper-V rule; removes old port forwards)" if mirrored else ")"),
    ]
    if not mirrored:
        steps += [f"Run .\\forward_ports.ps1   (forwards only TCP {ssh_port} to the distro's eth0 address)"]
    steps += ["Run .\\schedule_keepalive.ps1   (the task that starts WSL and holds it up"
              + (", also at startup: asks for your password once" if at_startup else "")
              + "; it prints the running distros and the networking mode in effect)",
              "From the laptop: ssh <name> true, then: mlconnect doctor"]
    numbered, n = [], 0
    for s in steps:
        if s.startswith("   "):
            numbered.append("   " + s)
        else:
            n += 1
            numbered.append(f"{n}. {s}")
    keep = "\n".join("- " + line for line in notes(at_startup=at_startup, no_idle_timeout=no_idle_timeout))
    return ("mlconnect: Windows side of the WSL2 GPU box\n"
            "===========================================\n\n"
            "Why only SSH: TensorBoard, Jupyter, the API and MLflow are reached through SSH tunnels\n"
            "(mlconnect tensorboard / jupyter / serve), so nothing but SSH is exposed to the network.\n\n"
            "Order:\n" + "\n".join(numbered) + "\n\nWhat keeps the box up:\n" + keep + "\n\n"
            "Undo (as Administrator): .\\undo.ps1   (removes the task, the firewall rules and every port\n"
            "forward, restores .wslconfig and /etc/wsl.conf from their first backups, removes the sshd\n"
            "drop-in), then: wsl --shutdown\n")


def write_windows_setup(out: Path, *, lan: str, ssh_port: int = 2222, memory: str | None = None,
                        processors: int | None = None, no_idle_timeout: bool = False, mirrored: bool = False,
                        at_startup: bool = False, distro: str = "") -> list[Path]:
    """Write the scripts and README.txt into ``out``; memory/processors None = 3/4 of the PC's, computed there."""
    cidr = parse_lan(lan)
    _check(ssh_port, memory, processors, distro)
    files = {"wslconfig.ps1": ps.render_wslconfig(memory, processors, no_idle_timeout, mirrored),
             "firewall.ps1": ps.render_firewall(ssh_port, cidr, mirrored)}
    if not mirrored:
        files["forward_ports.ps1"] = ps.render_forward_ports(ssh_port, cidr)
    files["keepalive.ps1"] = ps.render_keepalive(mirrored)
    files["schedule_keepalive.ps1"] = ps.render_schedule(at_startup, mirrored)
    files["undo.ps1"] = ps.render_undo(ssh_port)
    files["README.txt"] = render_readme(ssh_port, cidr, mirrored=mirrored, no_idle_timeout=no_idle_timeout,
                                        at_startup=at_startup)
    written = []
    for name, text in files.items():
        text = text.replace('param([string]$Distro = "")', f'param([string]$Distro = "{distro}")')
        path = out / name
        atomic_write_bytes(path, text.replace("\r\n", "\n").replace("\n", "\r\n").encode("ascii"))
        written.append(path)
    return written
