"""The control hub: a change any controller makes reaches the engine and every listener,
tagged with who made it; a refused one reaches neither."""

from __future__ import annotations

import pytest

from streamdit_live.controls import ControlError, Controls


class FakeEngine:
    """Checks like the engine does (a bad value raises before anything changes)."""

    def __init__(self) -> None:
        self.controls = Controls()
        self.resets = 0

    def apply(self, changes) -> None:
        self.controls = self.controls.replace(changes)

    def reset(self) -> None:
        self.resets += 1


def test_changes_reach_the_engine_and_every_listener_with_their_origin():
    from streamdit_live.hub import ControlHub

    hub, heard = ControlHub(), []
    hub.listen(lambda controls, origin, changes: heard.append((controls.prompt, origin, changes)))
    hub.engine = engine = FakeEngine()
    hub.target("osc").apply({"prompt": "fog"})
    hub.apply({"prompt": "rain"}, origin="gui")
    assert engine.controls.prompt == "rain"
    assert heard == [("fog", "osc", {"prompt": "fog"}), ("rain", "gui", {"prompt": "rain"})]
    assert set(hub.last) == {"osc", "gui"} and hub.last["osc"].changes == {"prompt": "fog"}

    with pytest.raises(ControlError):
        hub.target("osc").apply({"strength": 7.0})
    assert len(heard) == 2 and hub.last["osc"].changes == {"prompt": "fog"}

    hub.target("midi").reset()
    assert engine.resets == 1 and heard[-1][1:] == ("midi", {})


def test_before_the_stream_runs_a_change_is_refused_in_words():
    from streamdit_live.hub import ControlHub

    hub = ControlHub()
    with pytest.raises(ControlError, match="still starting"):
        hub.apply({"prompt": "fog"})
    hub.reset()  # nothing to reset yet: no error
