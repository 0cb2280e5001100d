"""ackbot.client is a library of its own: importing it loads nothing of the bot (its config,
responders or LLM backends), so a client-only install needs none of them."""

from __future__ import annotations

import json
import subprocess
import sys


def test_importing_the_client_loads_no_bot_module():
    code = (
        "import json, sys; import ackbot.client, ackbot.client.consumer; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ackbot.'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    assert "ackbot.client.consumer" in loaded  # the check would pass vacuously otherwise
    assert [name for name in loaded if name == "ackbot.bot" or name.startswith("ackbot.bot.")] == []
