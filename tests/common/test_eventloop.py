"""Which event loop the services run on: uvloop when installed, asyncio when asked for."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from ackbot.common import eventloop


def test_auto_picks_uvloop_when_it_is_installed(monkeypatch):
    monkeypatch.delenv(eventloop.EVENT_LOOP_ENV, raising=False)
    assert eventloop.loop_factory() is uvloop.new_event_loop


def test_the_environment_can_ask_for_asyncio(monkeypatch):
    monkeypatch.setenv(eventloop.EVENT_LOOP_ENV, "asyncio")
    assert eventloop.loop_factory() is None


def test_an_unknown_choice_names_the_variable_and_the_choices():
    with pytest.raises(ValueError, match="ACKBOT_EVENT_LOOP must be one of auto, uvloop, asyncio"):
        eventloop.loop_factory("trio")


def test_run_runs_the_coroutine_on_the_chosen_loop(monkeypatch):
    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    monkeypatch.setenv(eventloop.EVENT_LOOP_ENV, "uvloop")
    assert eventloop.run(loop_type()) is uvloop.Loop
    monkeypatch.setenv(eventloop.EVENT_LOOP_ENV, "asyncio")
    assert not issubclass(eventloop.run(loop_type()), uvloop.Loop)
