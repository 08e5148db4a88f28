"""What the source picker offers: the demo, the webcams and screens found, a region, a file.
Cheap checks only (no camera is opened here), so it can run on the Qt thread. No Qt here."""

from __future__ import annotations

import glob
import re
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceChoice:
    label: str
    spec: str  # a source spec, or REGION / FILE for the entries that ask for more


REGION, FILE = "screen-region", "file"


def webcams() -> list[SourceChoice]:
    """Video devices on Linux (by their /dev/videoN nodes); index 0 elsewhere."""
    if not sys.platform.startswith("linux"):
        return [SourceChoice("Webcam 0", "webcam:0")]
    found = []
    for path in sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        number = re.sub(r"\D", "", path)
        if number:
            found.append(SourceChoice(f"Webcam {number} ({path})", f"webcam:{number}"))
    return found


def screens() -> list[SourceChoice]:
    """Each monitor mss sees (1 = the first); none where there is no screen to capture."""
    try:
        import mss

        factory = getattr(mss, "MSS", None) or mss.mss  # mss.MSS since 10.2
        with factory() as grabber:
            monitors = grabber.monitors[1:]
    except Exception:  # noqa: BLE001 - no display, no X server: simply no screens
        return []
    return [
        SourceChoice(f"Screen {i} ({m['width']}x{m['height']})", f"screen:{i}")
        for i, m in enumerate(monitors, start=1)
    ]


def source_choices() -> list[SourceChoice]:
    return [
        SourceChoice("Demo (moving shapes)", "demo"),
        *webcams(),
        *screens(),
        SourceChoice("Screen region…", REGION),
        SourceChoice("Video file…", FILE),
    ]
