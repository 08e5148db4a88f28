"""A frame preview: shows uint8 (H, W, 3) frames scaled to fit, keeping the aspect."""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import Qt
from PyQt6.QtGui import QImage, QPixmap
from PyQt6.QtWidgets import QLabel, QSizePolicy


class FramePreview(QLabel):
    def __init__(self, placeholder: str, parent=None) -> None:
        super().__init__(placeholder, parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(240, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setStyleSheet("background: #111; color: #888; border-radius: 4px;")
        self.placeholder = placeholder
        self.frames_shown = 0
        self.last_frame: np.ndarray | None = None
        self._pixmap: QPixmap | None = None

    def show_frame(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a preview shows uint8 (H, W, 3) frames, got {frame.shape}.")
        frame = np.ascontiguousarray(frame)
        h, w = frame.shape[:2]
        image = QImage(frame.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self._pixmap = QPixmap.fromImage(image)
        self.last_frame = frame
        self._rescale()
        self.frames_shown += 1

    def clear_frame(self) -> None:
        self._pixmap = None
        self.clear()
        self.setText(self.placeholder)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is not None:
            self.setPixmap(
                self._pixmap.scaled(
                    self.size(),
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
