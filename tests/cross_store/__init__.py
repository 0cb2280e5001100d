"""Stores that share one PostgreSQL database: in-process pairs, processes, bots failing over."""
