"""Presets: named sets of control values in TOML files, checked against the control schema.

A preset file is flat: an optional `description` and any controls by name, e.g.

    description = "Restyle the webcam with little delay."
    mode = "video"
    strength = 0.45

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

from streamdit_live.controls import CONTROLS, ControlError, Controls, Mode, Size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

APP_NAME = "streamdit-live"
SUFFIX = ".toml"


class PresetError(ValueError):
    """A preset that does not exist or does not check out; the message names file and key."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: Mapping[str, object]  # checked control values, only the keys the file sets
    path: Path
    origin: str  # "shipped", "user" or "file"

    def apply(self, controls: Controls) -> Controls:
        return controls.replace(self.values)


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
    values = {}
    for key, value in data.items():
        spec = CONTROLS.get(key)
        if spec is None:
            allowed = ", ".join(["description", *CONTROLS])
            raise PresetError(f"{path}: unknown key {key!r}; allowed keys are {allowed}.")
        try:
            values[key] = spec.check(value)
        except ControlError as exc:
            raise PresetError(f"{path}: key {key!r}: {exc}") from None
    return Preset(path.stem, description, MappingProxyType(values), path, origin)


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
