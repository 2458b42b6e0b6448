"""Stores: SQL tables and share directories that packages are applied into."""
