"""The PyQt6 control app (`streamdit-live` or `streamdit-live gui`).

Only this package imports Qt (and `window.py`, the preview output's own process); the
engine, the session and the runner stay free of it.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from streamdit_live.controls import Controls
from streamdit_live.presets import PresetLibrary

log = logging.getLogger(__name__)

ORGANIZATION, APPLICATION = "streamdit-live", "control-app"
SCREENSHOT_FRAMES = 24  # output frames shown before the screenshot is taken
SCREENSHOT_TIMEOUT_MS = 180_000


def user_settings():
    from PyQt6.QtCore import QSettings

    return QSettings(
        QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION
    )


def run_app(args: argparse.Namespace, controls: Controls, library: PresetLibrary) -> int:
    """Open the control app and run Qt's loop until the window closes; the exit status."""
    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    from streamdit_live.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(["streamdit-live"])
    app.setApplicationName("StreamDiT Live")
    shot: Path | None = getattr(args, "screenshot", None)
    if shot is not None:  # a fresh settings file: the screenshot shows the first-run look
        settings = QSettings(str(Path(tempfile.mkdtemp()) / "shot.ini"), QSettings.Format.IniFormat)
    else:
        settings = user_settings()
    window = MainWindow(
        controls,
        library,
        settings,
        source=args.source,
        device=args.device,
        weights=tuple(args.weights),
        random_weights=args.random_weights,
        osc_port=None if args.no_osc else args.osc_port,
        saved_preset=args.preset is None,
    )
    window.show()
    if shot is not None:
        _screenshot_when_streaming(window, shot)
    return app.exec()


def _screenshot_when_streaming(window, path: Path) -> None:
    """Save the window to `path` once both previews have shown frames, then close it."""
    from PyQt6.QtCore import QElapsedTimer, QTimer

    clock, timer = QElapsedTimer(), QTimer(window)
    clock.start()

    def check() -> None:
        shown = min(window.input_preview.frames_shown, window.output_preview.frames_shown)
        if shown < SCREENSHOT_FRAMES and clock.elapsed() < SCREENSHOT_TIMEOUT_MS:
            return
        timer.stop()
        if not window.grab().save(str(path)):
            log.error("could not write the screenshot %s", path)
        else:
            print(f"streamdit-live: screenshot saved to {path}")
        window.close()

    timer.timeout.connect(check)
    timer.start(200)
