"""A labelled contact sheet: one row per run, a few frames of the input beside the output.

Drawn with OpenCV on a light canvas so a person can check what the numbers say. Letters:
F frames, H W pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, PAPER, FAINT = (20, 20, 20), (245, 245, 245), (110, 110, 110)
MARGIN, GAP, LINE = 10, 14, 16  # pixels: outer margin, gap between the two clips, text line


@dataclass(frozen=True)
class SheetRow:
    title: str  # first label line, e.g. the prompt
    detail: str  # second label line: the numbers
    left: np.ndarray  # uint8 (F, H, W, 3): the input, or what the prompt describes
    right: np.ndarray  # uint8 (F, H, W, 3): the output
    left_name: str
    right_name: str


def pick_frames(clip: np.ndarray, count: int) -> np.ndarray:
    """`count` frames spread evenly over the clip, first and last included."""
    index = np.linspace(0, len(clip) - 1, num=min(count, len(clip))).round().astype(int)
    return clip[index]


def _strip(clip: np.ndarray, count: int, thumb: int) -> np.ndarray:
    """Frames side by side, each scaled to `thumb` pixels high: uint8 (thumb, W', 3)."""
    tiles = []
    for frame in pick_frames(clip, count):
        h, w = frame.shape[:2]
        size = (max(1, round(w * thumb / h)), thumb)
        interp = cv2.INTER_AREA if h > thumb else cv2.INTER_NEAREST  # crisp small frames
        tiles.append(cv2.resize(frame, size, interpolation=interp))
        tiles.append(np.full((thumb, 2, 3), PAPER, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def _fit_text(text: str, width: int, scale: float) -> str:
    """Cut `text` with an ellipsis so it fits `width` pixels."""
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        text = text[:-4] + "..."
    return text


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()  # OpenCV's fonts draw ASCII only


def contact_sheet(rows: list[SheetRow], header: str, count: int = 4, thumb: int = 96) -> np.ndarray:
    """uint8 (H, W, 3) RGB: a header line, then per row two label lines and the two clips."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    strips = [(_strip(r.left, count, thumb), _strip(r.right, count, thumb)) for r in rows]
    width = max(a.shape[1] + GAP + b.shape[1] for a, b in strips) + 2 * MARGIN
    width = max(width, 640)
    row_height = 2 * LINE + LINE + thumb + MARGIN  # two labels, clip names, clips, space
    height = MARGIN + 2 * LINE + len(rows) * row_height
    sheet = np.full((height, width, 3), PAPER, np.uint8)
    text_width = width - 2 * MARGIN
    cv2.putText(
        sheet,
        _fit_text(_ascii(header), text_width, 0.5),
        (MARGIN, MARGIN + LINE),
        FONT,
        0.5,
        INK,
        1,
        cv2.LINE_AA,
    )
    y = MARGIN + 2 * LINE
    for row, (left, right) in zip(rows, strips, strict=True):
        cv2.line(sheet, (MARGIN, y - 4), (width - MARGIN, y - 4), FAINT, 1)
        for i, (text, scale) in enumerate(((row.title, 0.45), (row.detail, 0.4))):
            line = _fit_text(_ascii(text), text_width, scale)
            cv2.putText(
                sheet, line, (MARGIN, y + (i + 1) * LINE - 4), FONT, scale, INK, 1, cv2.LINE_AA
            )
        top = y + 3 * LINE
        for x, strip, name in (
            (MARGIN, left, row.left_name),
            (MARGIN + left.shape[1] + GAP, right, row.right_name),
        ):
            cv2.putText(
                sheet,
                _fit_text(_ascii(name), strip.shape[1], 0.4),
                (x, top - 4),
                FONT,
                0.4,
                FAINT,
                1,
                cv2.LINE_AA,
            )
            sheet[top : top + thumb, x : x + strip.shape[1]] = strip
        y += row_height
    return sheet


def write_png(path: str | Path, sheet: np.ndarray) -> Path:
    """Write an RGB sheet as a PNG; one sentence if the folder is not writable."""
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}; check that its folder exists and is writable.")
    return path
