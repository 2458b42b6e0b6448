"""Transports: SFTP to the platform, or a local directory; one interface."""
