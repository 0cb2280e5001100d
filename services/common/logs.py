"""Logging setup, called once from each entry point (never at import time)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    # grpc's own asyncio layer logs every cancelled handler at ERROR; they are expected here
    # (a bot that goes away cancels its stream), and ours log what matters.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
    # aiosqlite logs every operation at DEBUG; our own DEBUG lines are the useful ones.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
