"""The GUI's preset list: load, save as, rename, delete, restore the shipped ones.

Built on `presets.PresetLibrary` (the same files the CLI and OSC read): the user's presets
live in the library's last folder; shipped presets are never changed. A user preset with a
shipped preset's name shadows it; deleting it (or "restore shipped") brings the shipped one
back. No Qt here.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamdit_live.controls import CONTROLS, Controls
from streamdit_live.presets import SUFFIX, Preset, PresetError, PresetLibrary, to_toml

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
# A preset stores the look; pause is a live toggle, not part of a look.
_SAVED = tuple(name for name in CONTROLS if name != "pause")


class PresetStore:
    def __init__(self, library: PresetLibrary) -> None:
        self.library = library

    @property
    def user_dir(self) -> Path:
        return self.library.dirs[-1][1]

    def names(self) -> list[str]:
        return self.library.names()

    def get(self, name: str) -> Preset:
        return self.library.get(name, allow_path=False)

    def origin(self, name: str) -> str:
        return self.get(name).origin

    def shipped_names(self) -> set[str]:
        return {
            path.stem
            for origin, folder in self.library.dirs
            if origin == "shipped" and folder.is_dir()
            for path in folder.glob(f"*{SUFFIX}")
        }

    def check_name(self, name: str) -> str:
        name = name.strip()
        if not _NAME.match(name) or name.endswith(SUFFIX):
            raise PresetError(
                f"a preset name uses letters, digits, spaces, '-', '_' or '.' (up to 64), "
                f"got {name!r}; pick another name."
            )
        return name

    def save(self, name: str, controls: Controls, description: str = "") -> Preset:
        """Write `controls` as the user preset `name` (replacing one of that name)."""
        name = self.check_name(name)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        values = {key: getattr(controls, key) for key in _SAVED}
        (self.user_dir / f"{name}{SUFFIX}").write_text(to_toml(values, description), "utf-8")
        return self.get(name)

    def _user_path(self, name: str) -> Path:
        path = self.user_dir / f"{name}{SUFFIX}"
        if not path.is_file():
            raise PresetError(
                f"{name!r} is a shipped preset and cannot be changed; use Save as to keep a "
                "copy of your own."
            )
        return path

    def rename(self, old: str, new: str) -> Preset:
        path = self._user_path(old)
        new = self.check_name(new)
        target = self.user_dir / f"{new}{SUFFIX}"
        if target.exists() and new != old:
            raise PresetError(f"a preset named {new!r} exists already; pick another name.")
        path.rename(target)
        return self.get(new)

    def delete(self, name: str) -> None:
        self._user_path(name).unlink()

    def restore_shipped(self) -> list[str]:
        """Delete the user presets that shadow shipped ones; their names, sorted."""
        restored = []
        for name in sorted(self.shipped_names()):
            path = self.user_dir / f"{name}{SUFFIX}"
            if path.is_file():
                path.unlink()
                restored.append(name)
        return restored
