"""The one control schema: every knob the OSC server, presets, the CLI and the GUI bind to.

Each control is declared exactly once, as a field of `Controls` carrying a `Control` spec
(name, type, range or choices, default, help, and when a change can take effect). Everything
else derives from that declaration: `CONTROLS` (the schema, in declaration order), the OSC
address space, the preset keys and the CLI flags' types and help. Validation is pure and
raises `ControlError` with one sentence that names the control, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Longer prompts are truncated by the text encoder anyway; the cap bounds what an OSC
# sender can make us hold and encode.
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**31 - 1
# Kept in sync with model.config.CONFIGS and model.autoencoder.AE_CONFIGS by a test, so that
# listing or validating presets never has to import torch.
MODEL_CHOICES = ("tiny", "cpu", "4b")
# The model size whose trained weights ship with the app (model/weights/): the default.
SHIPPED_MODEL = "cpu"
# The looks the shipped model learned (training/looks.py); the default prompt is one.
DEFAULT_PROMPT = "a blue neon glow"


class ControlError(ValueError):
    """A value a user (CLI, preset file, OSC sender, GUI) gave for a control is not allowed."""


class Mode(enum.Enum):
    """What drives the stream: the input video (SDEdit-style) or the prompt alone."""

    VIDEO = "video"
    TEXT = "text"


class Scope(enum.Enum):
    """When a change to a control can take effect in a running stream."""

    LIVE = "live"  # between two model steps, nothing flushed
    RESTART = "restart"  # restarts the stream buffer (a reset), same model
    STARTUP = "startup"  # needs a new run (model weights, output size, output rate)


@dataclass(frozen=True)
class Size:
    """An output frame size in pixels, written `WxH`."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str) -> Size:
        w, sep, h = text.lower().partition("x")
        if not (sep and w.strip().isdigit() and h.strip().isdigit()):
            raise ValueError(f"expected WxH such as 256x256, got {text!r}")
        return cls(int(w), int(h))


@dataclass(frozen=True)
class Control:
    """The declaration of one control. `kind` is the Python type values have once checked."""

    name: str
    kind: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    scope: Scope = Scope.LIVE
    multiple_of: int = 1  # Size only: both sides must divide by this
    osc_name: str = ""  # the OSC address under /streamdit/ when it is not the name itself

    @property
    def allowed(self) -> str:
        """The allowed values, as a phrase for error messages and docs."""
        if self.kind is bool:
            return "true or false (1 or 0)"
        if self.kind is Mode:
            return "one of " + ", ".join(m.value for m in Mode)
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is Size:
            sides = f"from {self.low:.0f} to {self.high:.0f}, multiples of {self.multiple_of}"
            return f"WxH with sides {sides}"
        if self.kind is str:
            return f"text of at most {MAX_PROMPT_CHARS} characters"
        if self.kind is int:
            return f"an integer from {self.low:.0f} to {self.high:.0f}"
        return f"a number from {self.low:g} to {self.high:g}"

    def _reject(self, value: object) -> ControlError:
        return ControlError(f"{self.name} must be {self.allowed}, got {_quote(value)}.")

    def check(self, value: object) -> Any:
        """Return `value` as this control's type, or raise ControlError.

        Accepts what typed senders produce: an int for a float (TouchOSC sends both), an
        integral float for an int, 0/1 for a bool, a string for a mode or a size.
        """
        converted = _CONVERTERS[self.kind](self, value)
        if self.kind in (int, float) and not self.low <= converted <= self.high:
            raise self._reject(value)
        return converted

    def parse(self, text: str) -> Any:
        """Check a value typed as text (a CLI flag, a GUI field)."""
        text = text.strip()
        value: object = text
        if self.kind in (int, float):
            try:
                value = float(text) if self.kind is float else int(text)
            except ValueError:
                raise self._reject(text) from None
        elif self.kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "on", "yes"):
                value = True
            elif lowered in ("0", "false", "off", "no"):
                value = False
        try:
            return self.check(value)
        except ControlError:
            raise self._reject(text) from None  # quote what the user typed, not 2.0 for "2"


def _quote(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: an error must not echo a 16 KiB prompt."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]} [cut, {len(text)} characters]"


def _as_str(spec: Control, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        raise spec._reject(value)
    if spec.choices and value not in spec.choices:
        raise spec._reject(value)
    return value


def _as_float(spec: Control, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise spec._reject(value)
    if not math.isfinite(value):
        raise spec._reject(value)
    return float(value)


def _as_int(spec: Control, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise spec._reject(value)
    if isinstance(value, float) and not value.is_integer():
        raise spec._reject(value)
    return int(value)


def _as_bool(spec: Control, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise spec._reject(value)


def _as_mode(spec: Control, value: object) -> Mode:
    if isinstance(value, Mode):
        return value
    if isinstance(value, str):
        for mode in Mode:
            if mode.value == value.strip().lower():
                return mode
    raise spec._reject(value)


def _as_size(spec: Control, value: object) -> Size:
    size = value
    if isinstance(value, str):
        try:
            size = Size.parse(value)
        except ValueError:
            raise spec._reject(value) from None
    if not isinstance(size, Size):
        raise spec._reject(value)
    for side in (size.width, size.height):
        if not spec.low <= side <= spec.high or side % spec.multiple_of:
            raise spec._reject(value)
    return size


_CONVERTERS: dict[type, Callable[[Control, object], Any]] = {
    str: _as_str,
    float: _as_float,
    int: _as_int,
    bool: _as_bool,
    Mode: _as_mode,
    Size: _as_size,
}


def _control(kind: type, default: Any, help: str, **spec: Any) -> Any:
    """Declare a `Controls` field; the field name becomes the control's name."""
    return field(default=default, metadata={"control": (kind, help, spec)})


@dataclass(frozen=True)
class Controls:
    """A complete, checked set of control values. Immutable: changes make a new value."""

    prompt: str = _control(str, DEFAULT_PROMPT, "What the stream should look like.")
    prompt_a: str = _control(
        str, "", "Prompt A of the A/B crossfade; empty means use `prompt`.", osc_name="prompt/a"
    )
    prompt_b: str = _control(
        str, "", "Prompt B of the A/B crossfade; empty means no crossfade.", osc_name="prompt/b"
    )
    crossfade: float = _control(
        float, 0.0, "Blend from prompt A (0) to prompt B (1).", low=0.0, high=1.0
    )
    strength: float = _control(
        float,
        0.25,  # one noise stage of 4 levels: the looks read (model card), ~0.25 s camera to output
        "Video mode: how far the output may drift from the input (0 keeps it, 1 ignores it).",
        low=0.0,
        high=1.0,
        scope=Scope.RESTART,
    )
    seed: int = _control(
        int,
        0,
        "Noise seed; the same seed gives the same look.",
        low=0,
        high=MAX_SEED,
        scope=Scope.RESTART,
    )
    mode: Mode = _control(
        Mode,
        Mode.VIDEO,
        "video: restyle the input; text: generate from the prompt alone.",
        scope=Scope.RESTART,
    )
    pause: bool = _control(bool, False, "Hold the last frame and stop stepping the model.")
    guidance: float = _control(
        float,
        1.0,
        "Classifier-free guidance scale; 1 is off (distilled models need no more).",
        low=1.0,
        high=20.0,
        scope=Scope.RESTART,
    )
    chunk_size: int = _control(
        int,
        1,
        "Latent frames (4 video frames each) per emitted chunk; larger chunks allow bigger jumps.",
        low=1,
        high=16,
        scope=Scope.RESTART,
    )
    steps: int = _control(
        int,
        1,
        "Model calls per chunk and noise stage (1 for distilled weights).",
        low=1,
        high=16,
        scope=Scope.RESTART,
    )
    levels: int = _control(
        int,
        4,  # one stage at the default strength: a chunk period less latency than the buffer's 8
        "Video mode: noise levels between pure noise and clean. A chunk enters at the level "
        "the strength rounds up to (steps of 1/levels) and takes one model call per level "
        "below it, a chunk period apart: fewer levels, less latency, larger steps. 0 (or more "
        "than the model's buffer holds): one level per chunk of the buffer, 8 on the cpu "
        "model at chunk_size 1. Text mode always uses the whole buffer.",
        low=0,
        high=64,
        scope=Scope.RESTART,
    )
    model: str = _control(
        str,
        SHIPPED_MODEL,
        "Model size: cpu (1.6 M parameters), the shipped model: trained weights in "
        "model/weights/ load by default, real time at 256x256 on 2 CPU cores; tiny (0.17 M), "
        "for tests, random weights only; 4b (the paper's scale, 4 B parameters) for GPUs, "
        "random weights unless you bring your own with --weights.",
        choices=MODEL_CHOICES,
        scope=Scope.STARTUP,
    )
    size: Size = _control(
        Size,
        Size(256, 256),
        "The model's frame size WxH, not the output's (see --out-size): sources are scaled and "
        "center-cropped to it and the model generates at it, on a latent 8x smaller per side; "
        "larger sizes cost more time per frame.",
        low=32,
        high=2048,
        multiple_of=32,
        scope=Scope.STARTUP,
    )
    fps: float = _control(
        float,
        24.0,
        "Output frame rate the pacer holds; webcam, screen and demo sources are captured at "
        "it, a file: source plays at its own rate.",
        low=1.0,
        high=120.0,
        scope=Scope.STARTUP,
    )

    def replace(self, changes: Mapping[str, object]) -> Controls:
        """A copy with `changes` checked and applied; raises ControlError on the first bad one."""
        return dataclasses.replace(self, **check_changes(changes))

    def to_dict(self) -> dict[str, object]:
        """Plain values (modes and sizes as text), as written in presets and metrics."""
        out: dict[str, object] = {}
        for name in CONTROLS:
            value = getattr(self, name)
            out[name] = (
                value.value
                if isinstance(value, Mode)
                else (str(value) if isinstance(value, Size) else value)
            )
        return out

    def changed(self, other: Controls) -> frozenset[str]:
        """Names of the controls whose values differ between `self` and `other`."""
        return frozenset(n for n in CONTROLS if getattr(self, n) != getattr(other, n))


def _schema() -> dict[str, Control]:
    schema = {}
    for f in dataclasses.fields(Controls):
        kind, help_text, spec = f.metadata["control"]
        schema[f.name] = Control(name=f.name, kind=kind, default=f.default, help=help_text, **spec)
    return schema


CONTROLS: Mapping[str, Control] = _schema()


def check_changes(changes: Mapping[str, object]) -> dict[str, Any]:
    """Check a partial set of control values; unknown names and bad values raise ControlError."""
    checked = {}
    for name, value in changes.items():
        spec = CONTROLS.get(name)
        if spec is None:
            raise ControlError(f"unknown control {name!r}; known controls: {', '.join(CONTROLS)}.")
        checked[name] = spec.check(value)
    return checked


@dataclass(frozen=True)
class PromptMix:
    """What the text conditioning is: prompt `a`, blended towards `b` by `weight`."""

    a: str
    b: str
    weight: float

    @property
    def is_blend(self) -> bool:
        return self.a != self.b and self.weight > 0.0

    def describe(self) -> str:
        if not self.is_blend:
            return self.a
        if self.weight >= 1.0:
            return self.b
        return f"{self.a} -> {self.b} @{self.weight:.2f}"


def prompt_mix(controls: Controls) -> PromptMix:
    """The effective conditioning: A is `prompt_a` or else `prompt`; B is `prompt_b` or else A."""
    a = controls.prompt_a or controls.prompt
    b = controls.prompt_b or a
    return PromptMix(a, b, controls.crossfade if b != a else 0.0)


# --- the prompt state ------------------------------------------------------------------------
#
# Four controls make the text conditioning: `prompt`, the A/B deck `prompt_a` / `prompt_b`,
# and `crossfade` between them (`prompt_mix` above says how). Two rules keep every change to
# them visible, so that no message can be silently shadowed by an older one:
#   1. A plain `prompt` (one that comes without prompt_a or prompt_b) means "show this": it
#      ends A/B mixing (A and B emptied, crossfade back to 0), so the prompt is what is shown.
#   2. A preset that sets any of the four replaces all four; those it leaves out take their
#      defaults. A preset that sets none of them leaves the prompt state as it is.
# A crossfade above 0 while there is no B (or B equals A) would change nothing: refused.

PROMPT_STATE = ("prompt", "prompt_a", "prompt_b", "crossfade")
_DECK = {"prompt_a": "", "prompt_b": "", "crossfade": 0.0}


def end_ab_mixing(changes: Mapping[str, object]) -> dict[str, object]:
    """`changes` completed by rule 1: a prompt without prompt_a or prompt_b ends A/B mixing."""
    if "prompt" in changes and not changes.keys() & {"prompt_a", "prompt_b"}:
        return {**_DECK, **changes}
    return dict(changes)


def check_prompt_effect(after: Controls, changes: Mapping[str, object]) -> None:
    """Raise ControlError if `changes` set a crossfade above 0 that `after` (the controls
    they lead to) gives nothing to blend: no prompt B, or a B equal to A. (0 is all A, which
    is what is shown then: the value a preset or a plain prompt leaves.)"""
    if not changes.get("crossfade"):
        return
    a = after.prompt_a or after.prompt
    if (after.prompt_b or a) == a:
        raise ControlError(
            "crossfade has no effect without a prompt B that differs from A; "
            "set prompt_b first (a plain prompt ends A/B mixing)."
        )


def prompt_changes(current: Controls, changes: Mapping[str, object]) -> dict[str, object]:
    """`changes` (checked values) as the prompt rules make them, for controls now `current`;
    ControlError for a crossfade that would have no effect."""
    out = end_ab_mixing(changes)
    check_prompt_effect(current.replace(out), out)
    return out


def preset_prompt_state(values: Mapping[str, object]) -> dict[str, object]:
    """A preset's values completed by rule 2: all of the prompt state, or none of it."""
    if not values.keys() & set(PROMPT_STATE):
        return dict(values)
    return {**{name: CONTROLS[name].default for name in PROMPT_STATE}, **values}
