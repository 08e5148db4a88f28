"""`python -m streamdit_live.gui [options]`: the control app; `--screenshot PNG` saves a
picture of it once it streams, then quits (scripts/screenshot.sh runs it under Xvfb)."""

from __future__ import annotations

import sys

from streamdit_live.cli import main

if __name__ == "__main__":
    sys.exit(main(["gui", *sys.argv[1:]]))
