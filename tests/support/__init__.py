"""Test helpers that start real components (OpenSSH sshd on loopback)."""
