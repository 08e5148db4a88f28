"""The app's tests run without the shipped weights (model/weights/), whether or not this
checkout has them: a test that wants a shipped bundle points STREAMDIT_WEIGHTS at its own."""

from __future__ import annotations

import pytest

from streamdit_live.models import WEIGHTS_ENV


@pytest.fixture(autouse=True)
def no_shipped_weights(monkeypatch, tmp_path_factory):
    missing = tmp_path_factory.mktemp("no-shipped-weights") / "missing.safetensors"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    return missing
