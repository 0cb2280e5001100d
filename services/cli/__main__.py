"""`python -m ackbot.cli`: what the `ackbot` console script runs."""

import sys

from ackbot.cli import main

if __name__ == "__main__":
    sys.exit(main())
