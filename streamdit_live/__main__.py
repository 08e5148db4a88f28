"""`python -m streamdit_live` is `streamdit-live`."""

from streamdit_live.cli import main

raise SystemExit(main())
