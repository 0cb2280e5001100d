"""The tests that load a 2-core machine hard (the chaos profiles, the soak, 500 dropped streams)
or bound how long something takes on the wall clock (the keepalive, a hung bot's leases, a
timed wake, a delivery by notification between stores, a dead store's leases coming back).

`make test` runs the suite on several pytest-xdist workers; with `--dist loadgroup` every test
marked `heavy` runs on one worker, one after another, while the other workers run the rest. So
no two of them compete for the CPU, and a time a test measures is the store's, not that of
another chaos run beside it. The group is scheduled first: it is the longest lane of the run."""

from __future__ import annotations

import pytest

heavy = pytest.mark.xdist_group("heavy")
