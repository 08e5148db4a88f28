"""The control app's panels, as plain widgets with no behaviour: the main window wires them.

Ranges, defaults and tooltips come from the control schema (`controls.CONTROLS`), so a
slider and an OSC address always agree on what a control takes.
"""

from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from streamdit_live.controls import CONTROLS, MODEL_CHOICES, Mode

SLIDER_STEPS = 100  # a 0..1 control on a slider: hundredths


def _slider(name: str) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, SLIDER_STEPS)
    slider.setToolTip(CONTROLS[name].help)
    return slider


class SourcePanel(QGroupBox):
    def __init__(self) -> None:
        super().__init__("Source")
        form = QFormLayout(self)
        self.source = QComboBox()
        self.region = QLineEdit()
        self.region.setPlaceholderText("x, y, width, height, then Enter")
        self.region.hide()
        self.model = QComboBox()
        self.model.addItems(MODEL_CHOICES)
        self.model.setToolTip(CONTROLS["model"].help)
        self.mode = QComboBox()
        for mode in Mode:
            self.mode.addItem(mode.value, mode)
        self.mode.setToolTip(CONTROLS["mode"].help)
        self.start = QPushButton("Start")
        self.start.setToolTip("Start or stop the stream (F5)")
        form.addRow("Input", self.source)
        form.addRow("", self.region)
        form.addRow("Model", self.model)
        form.addRow("Mode", self.mode)
        form.addRow(self.start)


class PromptPanel(QGroupBox):
    def __init__(self) -> None:
        super().__init__("Look")
        form = QFormLayout(self)
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("Describe the look, then Enter")
        self.prompt.setToolTip(CONTROLS["prompt"].help + " Enter applies it.")
        self.prompt_a = QLineEdit()
        self.prompt_a.setPlaceholderText("Prompt A (Enter applies)")
        self.prompt_b = QLineEdit()
        self.prompt_b.setPlaceholderText("Prompt B (Enter applies)")
        self.crossfade = _slider("crossfade")
        fader = QHBoxLayout()
        fader.addWidget(QLabel("A"))
        fader.addWidget(self.crossfade)
        fader.addWidget(QLabel("B"))
        self.strength = _slider("strength")
        self.strength_label = QLabel()
        strength = QHBoxLayout()
        strength.addWidget(self.strength)
        strength.addWidget(self.strength_label)
        self.seed = QSpinBox()
        self.seed.setRange(CONTROLS["seed"].low, CONTROLS["seed"].high)
        self.seed.setToolTip(CONTROLS["seed"].help)
        form.addRow("Prompt", self.prompt)
        form.addRow("A", self.prompt_a)
        form.addRow("B", self.prompt_b)
        form.addRow("Crossfade", fader)
        form.addRow("Strength", strength)
        form.addRow("Seed", self.seed)


class PresetPanel(QGroupBox):
    def __init__(self) -> None:
        super().__init__("Presets")
        box = QVBoxLayout(self)
        self.list = QListWidget()
        self.list.setToolTip("Double-click or Ctrl+1..9 loads a preset")
        box.addWidget(self.list)
        row = QHBoxLayout()
        self.load = QPushButton("Load")
        self.save_as = QPushButton("Save as…")
        self.rename = QPushButton("Rename…")
        self.delete = QPushButton("Delete")
        self.restore = QPushButton("Restore shipped")
        for button in (self.load, self.save_as, self.rename, self.delete, self.restore):
            row.addWidget(button)
        box.addLayout(row)


class OutputPanel(QGroupBox):
    def __init__(self) -> None:
        super().__init__("Outputs")
        form = QFormLayout(self)
        self.virtualcam = QCheckBox("Virtual camera (OBS, Zoom, Discord)")
        self.record = QCheckBox("Record to")
        self.record_path = QLineEdit("streamdit.mp4")
        record = QHBoxLayout()
        record.addWidget(self.record)
        record.addWidget(self.record_path)
        self.mjpeg = QCheckBox("MJPEG on port")
        self.mjpeg_port = QSpinBox()
        self.mjpeg_port.setRange(1, 65535)
        self.mjpeg_port.setValue(8090)
        self.mjpeg_url = QLabel()
        self.mjpeg_url.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        mjpeg = QHBoxLayout()
        mjpeg.addWidget(self.mjpeg)
        mjpeg.addWidget(self.mjpeg_port)
        mjpeg.addWidget(self.mjpeg_url, 1)
        self.osc = QLabel("OSC: off")
        form.addRow(self.virtualcam)
        form.addRow(record)
        form.addRow(mjpeg)
        form.addRow(self.osc)


def column(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    box = QVBoxLayout(holder)
    box.setContentsMargins(6, 6, 6, 6)
    for widget in widgets:
        box.addWidget(widget)
    return holder
