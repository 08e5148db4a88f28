"""Packaging: a wheel built from this tree holds every module, the training configs and the
shipped presets, and the app installed from it lists the shipped presets.

pyproject.toml lists its packages by hand (the top-level presets/ folder is mapped into the
package), so these tests are what catch a new subpackage or data file left out of a wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "streamdit_live")
PRESET_NAMES = sorted(p.stem for p in (REPO / "presets").glob("*.toml"))
PACKAGED_PRESETS = "streamdit_live/shipped_presets"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what a build reads: setuptools writes build/ and *.egg-info beside
    pyproject.toml, and the checkout may be shared with other runs."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (*PACKAGES, "presets"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # No build isolation and no index: the build uses the venv's setuptools (a test extra),
    # so the test needs no network.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--quiet", "--wheel-dir", str(out), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.whl")
    return path


def _repo_files(*patterns: str) -> set[str]:
    found = set()
    for package in PACKAGES:
        for pattern in patterns:
            for path in (REPO / package).rglob(pattern):
                if "__pycache__" not in path.parts:
                    found.add(path.relative_to(REPO).as_posix())
    return found


def test_the_wheel_holds_every_module_config_and_shipped_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _repo_files("*.py", "*.toml", "*.cpp") - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    with zipfile.ZipFile(wheel) as zf:
        for name in PRESET_NAMES:
            packaged = zf.read(f"{PACKAGED_PRESETS}/{name}.toml")
            assert packaged == (REPO / "presets" / f"{name}.toml").read_bytes()
        # Nothing lands at the top of site-packages but our three packages.
        top = {n.split("/")[0] for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")}
        assert top == set(PACKAGES)
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "streamdit-live = streamdit_live.cli:main" in entry_points
    assert len(PRESET_NAMES) >= 8


def test_the_sdist_carries_the_top_level_presets(source, tmp_path):
    # `pip install streamdit-live` from an sdist builds the wheel from it.
    hook = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", hook, str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    sdist = tmp_path / done.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {f"presets/{name}.toml" for name in PRESET_NAMES} <= names


def test_an_installed_wheel_lists_the_shipped_presets(wheel, tmp_path):
    # A pure-Python wheel unpacked is what pip installs into site-packages; put it first on
    # the path, away from the checkout, and run the real command.
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site), XDG_CONFIG_HOME=str(tmp_path / "config"))
    script = (
        "import sys, streamdit_live.cli as cli; print(cli.__file__); "
        "sys.exit(cli.main(['presets', 'list']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    where, *rows = done.stdout.splitlines()
    assert Path(where).is_relative_to(site), f"imported the checkout, not the wheel: {where}"
    shipped = sorted(row.split()[0] for row in rows if row.split()[1:2] == ["shipped"])
    assert shipped == PRESET_NAMES
