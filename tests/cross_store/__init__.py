"""Stores that share one PostgreSQL database: in-process pairs, real processes, bots failing over."""
