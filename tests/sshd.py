"""Fixture: a real OpenSSH sshd on a free loopback port (filled in by the foundation work)."""
