"""Transports (how packages move) and stores (where their content lands)."""
