"""Pieces both services use: logging setup, the health + reflection server, address parsing."""
