"""Chaos suite: kills, restarts and network faults against real store and bot processes."""
