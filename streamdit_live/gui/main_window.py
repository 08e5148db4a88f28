"""The control app's window: source, look, presets and outputs on the left, the input and
output previews side by side on the right, plain-words status at the bottom.

Every control change goes through the control schema: the GUI's own edits to the running
engine via the session's hub (tagged "gui"), OSC's arrive from the hub as a signal and
update the fields at once. Changes made while nothing runs are kept and start with the
next stream. Startup-only choices (source, model, outputs) restart the session, reusing
the loaded model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from PyQt6.QtCore import QSettings, Qt, QTimer
from PyQt6.QtGui import QKeySequence, QShortcut
from PyQt6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMainWindow,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from streamdit_live.controls import (
    CONTROLS,
    ControlError,
    Controls,
    Scope,
    preset_prompt_state,
    prompt_changes,
)
from streamdit_live.events import Notice, NoticeKind, SessionState
from streamdit_live.gui.bridge import SessionBridge
from streamdit_live.gui.discover import FILE, REGION, source_choices
from streamdit_live.gui.panels import (
    SLIDER_STEPS,
    OutputPanel,
    PresetPanel,
    PromptPanel,
    SourcePanel,
    column,
)
from streamdit_live.gui.preset_store import PresetStore
from streamdit_live.gui.preview import FramePreview
from streamdit_live.gui.wording import osc_line, stats_line, word_notice
from streamdit_live.models import Models, resolve_weights
from streamdit_live.presets import PresetError, PresetLibrary
from streamdit_live.runner import NotRunning
from streamdit_live.session import SessionPlan
from streamdit_live.sources import parse_source

log = logging.getLogger(__name__)

TITLE = "StreamDiT Live"


class MainWindow(QMainWindow):
    def __init__(
        self,
        controls: Controls,
        library: PresetLibrary,
        settings: QSettings,
        *,
        source: str | None = None,
        device: str | None = None,
        weights: tuple[Path, ...] = (),
        random_weights: bool = False,
        osc_port: int | None = 9000,
        autostart: bool = True,
        saved_preset: bool = False,
        models: Models | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle(TITLE)
        self.controls = controls
        self.store = PresetStore(library)
        self.settings = settings
        # --weights, else (unless random_weights) the shipped bundle of the model picked
        self.device, self.weights, self.random_weights = device, weights, random_weights
        self.state = SessionState.IDLE
        self.wanted = False  # the user asked for a stream (the state follows a moment later)
        self.bridge = SessionBridge(library, osc_port, self)
        self._build()
        self._restore(source)
        if models is not None:  # loaded already (tests, a second window): no load on start
            self.bridge.runner.keep(models, self.plan())
        self._wire()
        self._show_controls(controls)
        remembered = settings.value("preset")
        if saved_preset and remembered in self.store.names():
            self.load_preset(remembered)  # where the user left off
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(250)
        if autostart:
            self.start()

    # --- layout ---------------------------------------------------------------------

    def _build(self) -> None:
        self.source_panel, self.prompt_panel = SourcePanel(), PromptPanel()
        self.preset_panel, self.output_panel = PresetPanel(), OutputPanel()
        self.input_preview = FramePreview("Input")
        self.output_preview = FramePreview("Output")
        self.stats = QLabel("—")
        previews = QWidget()
        row = QHBoxLayout()
        row.addWidget(self._titled("Input", self.input_preview))
        row.addWidget(self._titled("Output", self.output_preview))
        box = QVBoxLayout(previews)
        box.addLayout(row, 1)
        box.addWidget(self.stats)
        box.addWidget(self.output_panel)
        left = column(self.source_panel, self.prompt_panel, self.preset_panel)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(previews)
        splitter.setStretchFactor(1, 1)
        self.setCentralWidget(splitter)
        for choice in source_choices():
            self.source_panel.source.addItem(choice.label, choice.spec)
        self._fill_presets()

    @staticmethod
    def _titled(title: str, widget: QWidget) -> QWidget:
        label = QLabel(f"<b>{title}</b>")
        return column(label, widget)

    def _wire(self) -> None:
        s, p, o, b = self.source_panel, self.prompt_panel, self.output_panel, self.bridge
        s.start.clicked.connect(self.toggle)
        s.source.activated.connect(lambda _: self._source_picked())
        s.region.returnPressed.connect(lambda: self.set_source(f"screen:{s.region.text()}"))
        s.model.activated.connect(lambda _: self._startup_change("model", s.model.currentText()))
        s.mode.activated.connect(lambda _: self.change({"mode": s.mode.currentData()}))
        p.prompt.returnPressed.connect(lambda: self.change({"prompt": p.prompt.text()}))
        p.prompt_a.returnPressed.connect(lambda: self.change({"prompt_a": p.prompt_a.text()}))
        p.prompt_b.returnPressed.connect(lambda: self.change({"prompt_b": p.prompt_b.text()}))
        p.crossfade.valueChanged.connect(lambda v: self.change({"crossfade": v / SLIDER_STEPS}))
        p.strength.valueChanged.connect(lambda v: self.change({"strength": v / SLIDER_STEPS}))
        p.seed.editingFinished.connect(lambda: self.change({"seed": p.seed.value()}))
        lst = self.preset_panel
        lst.load.clicked.connect(lambda: self.load_preset(self._selected_preset()))
        lst.list.itemDoubleClicked.connect(lambda item: self.load_preset(item.text()))
        lst.save_as.clicked.connect(lambda: self.save_preset_as())
        lst.rename.clicked.connect(lambda: self.rename_preset())
        lst.delete.clicked.connect(lambda: self.delete_preset())
        lst.restore.clicked.connect(self.restore_presets)
        for box in (o.virtualcam, o.record, o.mjpeg):
            box.toggled.connect(lambda _: self._outputs_changed())
        o.record_path.editingFinished.connect(self._outputs_changed)
        o.mjpeg_port.editingFinished.connect(self._outputs_changed)
        b.input_ready.connect(lambda: self._paint(b.take_input(), self.input_preview))
        b.output_ready.connect(lambda: self._paint(b.take_output(), self.output_preview))
        b.state_changed.connect(self._on_state)
        b.notice.connect(self._on_notice)
        b.controls_changed.connect(self._on_controls)
        QShortcut(QKeySequence("F5"), self, self.toggle)
        QShortcut(QKeySequence("Ctrl+S"), self, lambda: self.save_preset_as())
        for n in range(1, 10):
            QShortcut(QKeySequence(f"Ctrl+{n}"), self, lambda n=n: self._preset_by_number(n))

    # --- the session ----------------------------------------------------------------

    @property
    def source(self) -> str:
        return self._source

    def outputs(self) -> tuple[str, ...]:
        o = self.output_panel
        out = []
        if o.virtualcam.isChecked():
            out.append("virtualcam")
        if o.record.isChecked() and o.record_path.text().strip():
            out.append(f"file:{o.record_path.text().strip()}")
        if o.mjpeg.isChecked():
            out.append(f"mjpeg:{o.mjpeg_port.value()}")
        return tuple(out)

    def plan(self) -> SessionPlan:
        return SessionPlan(
            controls=self.controls,
            source=self._source,
            outputs=self.outputs(),
            device=self.device,
            weights=resolve_weights(self.controls.model, self.weights, self.random_weights),
            model_explicit=bool(self.weights),
            require_output=False,  # the previews are enough
            # A webcam that will not open: the demo runs, and the status bar says why.
            fallback_source="demo" if self._source.startswith("webcam") else None,
        )

    def start(self) -> None:
        self.statusBar().clearMessage()
        self.wanted = True
        self.bridge.start(self.plan())
        self.source_panel.start.setText("Stop")

    def stop(self) -> None:
        self.wanted = False
        self.bridge.stop()
        self.source_panel.start.setText("Start")

    def toggle(self) -> None:
        self.stop() if self.wanted else self.start()

    def _restart_if_running(self) -> None:
        if self.wanted:
            self.start()  # the bridge stops the running session first

    def set_source(self, spec: str) -> None:
        """Switch to source `spec` (restarting a running stream with it)."""
        try:
            parse_source(spec)
        except ValueError as exc:
            self.statusBar().showMessage(str(exc))
            return
        combo = self.source_panel.source
        index = combo.findData(spec)
        if index < 0:
            label = f"File: {Path(spec[5:]).name}" if spec.startswith("file:") else spec
            combo.insertItem(combo.count() - 2, label, spec)
            index = combo.findData(spec)
        combo.setCurrentIndex(index)
        self._source = spec
        self.settings.setValue("source", spec)
        self._restart_if_running()

    def _source_picked(self) -> None:
        s = self.source_panel
        spec = s.source.currentData()
        s.region.setVisible(spec == REGION)
        if spec == REGION:
            s.region.setFocus()
        elif spec == FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Pick a video", "", "Videos (*.*)")
            if path:
                self.set_source(f"file:{path}")
        else:
            self.set_source(spec)

    def _outputs_changed(self) -> None:
        o = self.output_panel
        self.settings.setValue("outputs/virtualcam", o.virtualcam.isChecked())
        self.settings.setValue("outputs/record", o.record.isChecked())
        self.settings.setValue("outputs/record_path", o.record_path.text())
        self.settings.setValue("outputs/mjpeg", o.mjpeg.isChecked())
        self.settings.setValue("outputs/mjpeg_port", o.mjpeg_port.value())
        o.mjpeg_url.setText("")
        self._restart_if_running()

    # --- controls -------------------------------------------------------------------

    def change(self, changes: Mapping[str, object]) -> None:
        """Apply a change from a widget: to the running engine at once, else for the next
        start. A refused value is said in the status bar and the fields show what runs."""
        try:
            changes = prompt_changes(self.controls, changes)
            wanted = self.controls.replace(changes)
            try:
                self.controls = self.bridge.apply(changes)
            except NotRunning:  # starting, restarting or stopped: it goes with the next start
                self.controls = wanted
        except ControlError as exc:
            self.statusBar().showMessage(f"Not applied: {exc}")
        self._show_controls(self.controls)

    def _startup_change(self, name: str, value: object) -> None:
        try:
            self.controls = self.controls.replace({name: value})
        except ControlError as exc:
            self.statusBar().showMessage(f"Not applied: {exc}")
            return
        self._restart_if_running()

    def _on_controls(self, controls: Controls, origin: str, changes: dict) -> None:
        if origin == "gui":
            return
        self.controls = controls
        self._show_controls(controls)

    def _show_controls(self, c: Controls) -> None:
        p, s = self.prompt_panel, self.source_panel
        widgets = (
            p.prompt,
            p.prompt_a,
            p.prompt_b,
            p.crossfade,
            p.strength,
            p.seed,
            s.mode,
            s.model,
        )
        for widget in widgets:
            widget.blockSignals(True)
        for edit, text in (
            (p.prompt, c.prompt),
            (p.prompt_a, c.prompt_a),
            (p.prompt_b, c.prompt_b),
        ):
            if edit.text() != text and not (edit.hasFocus() and edit.isModified()):
                edit.setText(text)
        p.crossfade.setValue(round(c.crossfade * SLIDER_STEPS))
        p.strength.setValue(round(c.strength * SLIDER_STEPS))
        p.strength_label.setText(f"{c.strength:.2f}")
        p.seed.setValue(c.seed)
        s.mode.setCurrentIndex(s.mode.findData(c.mode))
        s.model.setCurrentText(c.model)
        for widget in widgets:
            widget.blockSignals(False)

    # --- presets --------------------------------------------------------------------

    def _fill_presets(self, select: str | None = None) -> None:
        lst = self.preset_panel.list
        lst.clear()
        for name in self.store.names():
            lst.addItem(name)
        if select is not None:
            for item in lst.findItems(select, Qt.MatchFlag.MatchExactly):
                lst.setCurrentItem(item)

    def _selected_preset(self) -> str | None:
        item = self.preset_panel.list.currentItem()
        return item.text() if item is not None else None

    def _preset_by_number(self, n: int) -> None:
        names = self.store.names()
        if n <= len(names):
            self.load_preset(names[n - 1])

    def load_preset(self, name: str | None) -> None:
        if not name:
            return
        try:
            values = preset_prompt_state(self.store.get(name).values)
        except PresetError as exc:
            self.statusBar().showMessage(str(exc))
            return
        startup = {k: v for k, v in values.items() if CONTROLS[k].scope is Scope.STARTUP}
        live = {k: v for k, v in values.items() if k not in startup}
        restart = any(getattr(self.controls, k) != v for k, v in startup.items())
        self.controls = self.controls.replace(startup)
        self.change(live)
        self.settings.setValue("preset", name)
        self._fill_presets(select=name)
        self.statusBar().showMessage(f"Preset {name} loaded.", 3000)
        if restart:
            self._restart_if_running()

    def _ask_name(self, title: str, text: str = "") -> str | None:
        name, ok = QInputDialog.getText(self, title, "Preset name:", text=text)
        return name if ok and name.strip() else None

    def save_preset_as(self, name: str | None = None) -> None:
        name = name or self._ask_name("Save preset as")
        if name is None:
            return
        self._preset_action(lambda: self.store.save(name, self.controls).name, "saved")

    def rename_preset(self, old: str | None = None, new: str | None = None) -> None:
        old = old or self._selected_preset()
        if old is None:
            return
        new = new or self._ask_name("Rename preset", old)
        if new is not None:
            self._preset_action(lambda: self.store.rename(old, new).name, "renamed")

    def delete_preset(self, name: str | None = None) -> None:
        name = name or self._selected_preset()
        if name is not None:
            self._preset_action(lambda: (self.store.delete(name), name)[1], "deleted")

    def restore_presets(self) -> None:
        restored = self.store.restore_shipped()
        self._fill_presets()
        words = ", ".join(restored) if restored else "nothing to restore"
        self.statusBar().showMessage(f"Shipped presets restored: {words}.", 5000)

    def _preset_action(self, action, done: str) -> None:
        try:
            name = action()
        except (PresetError, OSError) as exc:
            self.statusBar().showMessage(str(exc))
            return
        self._fill_presets(select=name if done != "deleted" else None)
        if done != "deleted":
            self.settings.setValue("preset", name)
        self.statusBar().showMessage(f"Preset {name} {done}.", 3000)

    # --- what the session says ------------------------------------------------------

    def _paint(self, frame, preview: FramePreview) -> None:
        if frame is not None:
            preview.show_frame(frame)

    def _on_state(self, state: SessionState) -> None:
        self.state = state
        if state is SessionState.FAILED:
            self.wanted = False
        self.source_panel.start.setText("Stop" if self.wanted else "Start")
        if state is SessionState.RUNNING:
            self._sync_engine()
            self._show_urls()

    def _sync_engine(self) -> None:
        """Changes made while the model loaded reach the engine now."""
        session = self.bridge.session
        engine = session.engine if session is not None else None
        if engine is None:
            return
        pending = {
            n: getattr(self.controls, n)
            for n in self.controls.changed(engine.controls)
            if CONTROLS[n].scope is not Scope.STARTUP
        }
        if pending:
            try:
                self.controls = self.bridge.apply(pending)
            except ControlError as exc:
                self.statusBar().showMessage(f"Not applied: {exc}")

    def _show_urls(self) -> None:
        session = self.bridge.session
        sinks = session.outputs if session is not None else []
        urls = [s.url for s in sinks if getattr(s, "url", None)]
        self.output_panel.mjpeg_url.setText(urls[0] if urls else "")

    def word(self, notice: Notice) -> str:
        return word_notice(notice, self.bridge.osc_port)

    def _on_notice(self, notice: Notice) -> None:
        if notice.kind is NoticeKind.OUTPUT_UNAVAILABLE and notice.subject == "virtualcam":
            box = self.output_panel.virtualcam
            box.blockSignals(True)
            box.setChecked(False)  # checking it again tries again
            box.blockSignals(False)
        if notice.kind is NoticeKind.RANDOM_WEIGHTS and self.statusBar().currentMessage():
            return  # a hint, never over a problem the user has to act on
        self.statusBar().showMessage(self.word(notice))

    def _tick(self) -> None:
        session = self.bridge.session
        models = session.models if session is not None else None
        weights = models.describe_weights() if models is not None else None
        self.stats.setText(stats_line(self.state, self.bridge.runner.status(), weights))
        address = last = None
        if session is not None and session.osc is not None and self.bridge.runner.running:
            try:
                address = session.osc.address
            except OSError:  # it stopped just now
                address = None
            last = session.hub.last.get("osc")
        self.output_panel.osc.setText(
            osc_line(self.bridge.osc_port, address, last, time.monotonic())
        )

    # --- settings -------------------------------------------------------------------

    def _restore(self, source: str | None) -> None:
        s, o = self.settings, self.output_panel
        geometry = s.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1100, 720)
        combo = self.source_panel.source
        first_cam = next(
            (
                combo.itemData(i)
                for i in range(combo.count())
                if str(combo.itemData(i)).startswith("webcam")
            ),
            None,
        )
        self._source = source or s.value("source") or first_cam or "demo"
        self.set_source(self._source)
        o.virtualcam.setChecked(s.value("outputs/virtualcam", False, type=bool))
        o.record.setChecked(s.value("outputs/record", False, type=bool))
        o.record_path.setText(s.value("outputs/record_path", "streamdit.mp4"))
        o.mjpeg.setChecked(s.value("outputs/mjpeg", False, type=bool))
        o.mjpeg_port.setValue(int(s.value("outputs/mjpeg_port", 8090)))
        preset = s.value("preset")
        if preset and preset in self.store.names():
            self._fill_presets(select=preset)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.sync()
        self._timer.stop()
        self.hide()
        self.bridge.shutdown()  # every session thread and output process ends here
        super().closeEvent(event)
