"""Presets: named sets of control values in TOML files, checked against the control schema.

A preset file is flat: an optional `description` and any controls by name, e.g.

    description = "Restyle the webcam with little delay."
    mode = "video"
    strength = 0.45

Two keys are not controls but what a preset needs to run: `weights`, the name of a model
`streamdit-live download` fetches (the preset runs those weights, found where the download
puts them unless --weights names them), and `device = "cuda"` for a preset that needs a GPU.
`check_needs` refuses such a preset in one sentence where it cannot run.

Keys a preset leaves out keep their current values (the defaults at startup). Presets come
from the shipped `presets/` directory and from the user's config directory; a user preset
with the same name as a shipped one wins, so shipped looks can be tuned without editing them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from streamdit_live.controls import CONTROLS, ControlError, Controls, Mode, Size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

APP_NAME = "streamdit-live"
SUFFIX = ".toml"


NEEDS_KEYS = ("weights", "device")  # what a preset needs, beside its controls
GPU = "cuda"


class PresetError(ValueError):
    """A preset that does not exist or does not check out; the message names file and key."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: Mapping[str, object]  # checked control values, only the keys the file sets
    path: Path
    origin: str  # "shipped", "user" or "file"
    weights: str = ""  # a `streamdit-live download` name the preset runs; "" for any
    device: str = ""  # "cuda" when it needs a GPU; "" for any device

    def apply(self, controls: Controls) -> Controls:
        return controls.replace(self.values)

    def describe_needs(self) -> str:
        """What the preset needs to run, in a few words ("" for nothing special)."""
        needs = ["a CUDA GPU"] if self.device == GPU else []
        if self.weights:
            needs.append(f"the {self.weights} weights (`streamdit-live download {self.weights}`)")
        return " and ".join(needs)


def check_needs(
    preset: Preset,
    device: str,
    weights_given: bool,
    random_weights: bool,
    found: Sequence[Path] | None,
) -> tuple[Path, ...]:
    """The weights a preset runs: () when it needs none or --weights names them, else the
    downloaded ones (`found`: their paths, None when not downloaded); one sentence when the
    device (`device`: "cpu" or "cuda...", what the run will use) or the weights are missing."""
    if preset.device == GPU and not device.startswith(GPU):
        raise PresetError(
            f"the preset {preset.name} needs a CUDA GPU and this run is on the {device}; pick "
            "another preset (`streamdit-live presets list`) or run where a GPU is."
        )
    if not preset.weights or weights_given:
        return ()
    if random_weights:
        raise PresetError(
            f"the preset {preset.name} runs the downloaded {preset.weights} weights, which "
            "--random-weights would replace; drop --random-weights."
        )
    if found is None:
        from streamdit_live.download import TAEHV_NAME, target_dir

        raise PresetError(
            f"the preset {preset.name} runs {preset.weights}, whose weights are not in "
            f"{target_dir(preset.weights)}: run `streamdit-live download {preset.weights}` and "
            f"`streamdit-live download {TAEHV_NAME}`, or give --weights FOLDER."
        )
    return tuple(found)


def shipped_dir() -> Path:
    """The shipped presets: the copy an installed wheel carries inside the package, else the
    repository's top-level `presets/` (a checkout or an editable install).

    pyproject.toml maps `presets/` into the package as `streamdit_live/shipped_presets/`; the
    packaged copy is looked at first so an installed app never reads a stray `presets/`
    folder that happens to sit beside it in site-packages.
    """
    package = Path(__file__).resolve().parent
    packaged = package / "shipped_presets"
    return packaged if packaged.is_dir() else package.parent / "presets"


def user_dir() -> Path:
    """Where users keep their own presets: <user config dir>/streamdit-live/presets."""
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME)) / "presets"


def load_preset(path: Path, origin: str = "file") -> Preset:
    """Read and check one preset file; raise PresetError naming the file and the key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PresetError(f"{path}: cannot read the preset ({exc.strerror}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: not valid TOML ({exc}).") from None
    except UnicodeDecodeError:
        raise PresetError(f"{path}: not UTF-8 text; save the preset as UTF-8.") from None
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise PresetError(f"{path}: key 'description' must be text, got {description!r}.")
    weights, device = (data.pop(key, "") for key in NEEDS_KEYS)
    if weights:
        from streamdit_live.download import CATALOG

        if not isinstance(weights, str) or weights not in CATALOG:
            raise PresetError(
                f"{path}: key 'weights' must be a `streamdit-live download` name, one of "
                f"{', '.join(CATALOG)}, got {weights!r}."
            )
    if device not in ("", GPU):
        raise PresetError(f"{path}: key 'device' can only be {GPU!r}, got {device!r}.")
    values = {}
    for key, value in data.items():
        spec = CONTROLS.get(key)
        if spec is None:
            allowed = ", ".join(["description", *CONTROLS, *NEEDS_KEYS])
            raise PresetError(f"{path}: unknown key {key!r}; allowed keys are {allowed}.")
        try:
            values[key] = spec.check(value)
        except ControlError as exc:
            raise PresetError(f"{path}: key {key!r}: {exc}") from None
    return Preset(path.stem, description, MappingProxyType(values), path, origin, weights, device)


class PresetLibrary:
    """The presets found in an ordered list of (origin, directory); later directories win."""

    def __init__(self, dirs: Sequence[tuple[str, Path]]) -> None:
        self.dirs = list(dirs)

    @classmethod
    def default(cls) -> PresetLibrary:
        return cls([("shipped", shipped_dir()), ("user", user_dir())])

    def _files(self) -> dict[str, tuple[str, Path]]:
        found: dict[str, tuple[str, Path]] = {}
        for origin, directory in self.dirs:
            if directory.is_dir():
                for path in sorted(directory.glob(f"*{SUFFIX}")):
                    found[path.stem] = (origin, path)
        return found

    def names(self) -> list[str]:
        return sorted(self._files())

    def get(self, name: str, allow_path: bool = True) -> Preset:
        """A preset by name, or by path to a .toml file; raise PresetError if missing or bad.

        OSC passes allow_path=False: a sender on the network must not make the app read
        arbitrary files.
        """
        if allow_path and name.endswith(SUFFIX) and Path(name).is_file():
            return load_preset(Path(name))
        entry = self._files().get(name)
        if entry is None:
            available = ", ".join(self.names()) or "none"
            raise PresetError(
                f"unknown preset {name!r}; available presets: {available}"
                + (f" (or give the path of a {SUFFIX} file)." if allow_path else ".")
            )
        origin, path = entry
        return load_preset(path, origin)

    def all(self) -> list[Preset | PresetError]:
        """Every preset, in name order; a broken file appears as its error, not a crash."""
        out: list[Preset | PresetError] = []
        for name in self.names():
            try:
                out.append(self.get(name))
            except PresetError as exc:
                out.append(exc)
        return out


def _toml_value(value: object) -> str:
    if isinstance(value, Mode):
        value = value.value
    elif isinstance(value, Size):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # A JSON string literal is also a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def to_toml(values: Mapping[str, object], description: str = "") -> str:
    """Write control values as a preset file that `load_preset` reads back unchanged."""
    lines = [f"description = {_toml_value(description)}"] if description else []
    lines += [f"{name} = {_toml_value(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def preset_weights(name: str | None, library: PresetLibrary, args: Any) -> tuple[Path, ...]:
    """The weights a run of preset `name` loads: --weights (`args.weights`) when given, the
    preset's downloaded weights when it names some, else none; one sentence (`check_needs`)
    where the preset cannot run. `args` has `weights`, `device` and `random_weights`."""
    given = tuple(args.weights)
    if not name:
        return given
    preset = library.get(name)
    if not (preset.device or preset.weights):
        return given
    from streamdit_live.download import downloaded

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    found = downloaded(preset.weights) if preset.weights else None
    needs = check_needs(
        preset, device, bool(given), args.random_weights, None if found is None else [found]
    )
    return needs or given
