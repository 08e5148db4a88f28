"""The control schema as pure functions: declaration, checking, error sentences, prompt mix."""

from __future__ import annotations

import dataclasses

import pytest

from streamdit_live.controls import (
    CONTROLS,
    MODEL_CHOICES,
    ControlError,
    Controls,
    Mode,
    Scope,
    Size,
    check_changes,
    prompt_mix,
)


def test_schema_is_declared_once_and_matches_the_value_object():
    assert list(CONTROLS) == [f.name for f in dataclasses.fields(Controls)]
    defaults = Controls()
    for name, spec in CONTROLS.items():
        assert spec.name == name
        assert spec.help.endswith(".")
        assert getattr(defaults, name) == spec.default
        # Every default passes its own check unchanged.
        assert spec.check(spec.default) == spec.default


def test_required_controls_have_the_issue_types_and_ranges():
    assert CONTROLS["crossfade"].kind is float
    assert (CONTROLS["crossfade"].low, CONTROLS["crossfade"].high) == (0.0, 1.0)
    assert (CONTROLS["strength"].low, CONTROLS["strength"].high) == (0.0, 1.0)
    assert CONTROLS["seed"].kind is int
    assert CONTROLS["mode"].kind is Mode
    assert CONTROLS["pause"].kind is bool
    for name in ("prompt", "prompt_a", "prompt_b"):
        assert CONTROLS[name].kind is str
        assert CONTROLS[name].scope is Scope.LIVE


def test_model_choices_match_the_model_configs():
    from model.autoencoder import AE_CONFIGS
    from model.config import CONFIGS

    assert set(MODEL_CHOICES) == set(CONFIGS) == set(AE_CONFIGS)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("strength", 1, 1.0),  # TouchOSC sends ints for floats
        ("crossfade", 0.25, 0.25),
        ("seed", 7.0, 7),  # an integral float is an int
        ("pause", 1, True),
        ("pause", 0.0, False),
        ("mode", "TEXT", Mode.TEXT),
        ("mode", Mode.VIDEO, Mode.VIDEO),
        ("size", "512x256", Size(512, 256)),
        ("model", "cpu", "cpu"),
    ],
)
def test_check_accepts_what_typed_senders_produce(name, value, expected):
    checked = CONTROLS[name].check(value)
    assert checked == expected
    assert type(checked) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("strength", 1.5, "a number from 0 to 1"),
        ("strength", -0.1, "a number from 0 to 1"),
        ("strength", "high", "a number from 0 to 1"),
        ("strength", True, "a number from 0 to 1"),
        ("crossfade", float("nan"), "a number from 0 to 1"),
        ("seed", 1.5, "an integer from 0 to 2147483647"),
        ("seed", -1, "an integer from 0 to 2147483647"),
        ("pause", 2, "true or false"),
        ("mode", "image", "one of video, text"),
        ("model", "huge", "one of tiny, cpu, 4b"),
        ("size", "100x100", "multiples of 32"),
        ("size", "big", "WxH"),
        ("prompt", 42, "text of at most"),
        ("prompt", "x" * 5000, "text of at most"),
    ],
)
def test_errors_name_the_control_the_value_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ControlError) as info:
        CONTROLS[name].check(value)
    message = str(info.value)
    assert message.startswith(f"{name} must be ")
    assert allowed in message
    assert repr(value)[:20] in message
    assert message.endswith(".") and message.count(". ") == 0  # one sentence


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("strength", "0.5", 0.5),
        ("seed", "42", 42),
        ("pause", "on", True),
        ("pause", "false", False),
        ("mode", "text", Mode.TEXT),
        ("size", "320x192", Size(320, 192)),
    ],
)
def test_parse_reads_text_fields(name, text, expected):
    assert CONTROLS[name].parse(text) == expected


def test_parse_rejects_bad_text_with_the_same_sentence():
    with pytest.raises(ControlError, match=r"^seed must be an integer"):
        CONTROLS["seed"].parse("4.5")


def test_replace_checks_and_returns_a_new_value():
    base = Controls()
    changed = base.replace({"strength": 1, "mode": "text", "prompt": "fog"})
    assert (changed.strength, changed.mode, changed.prompt) == (1.0, Mode.TEXT, "fog")
    assert base.strength == CONTROLS["strength"].default  # the original is untouched
    assert changed.changed(base) == {"strength", "mode", "prompt"}
    with pytest.raises(ControlError, match="unknown control 'strenght'"):
        base.replace({"strenght": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.strength = 0.1  # type: ignore[misc]


def test_check_changes_stops_at_the_first_bad_value():
    assert check_changes({"seed": 3, "crossfade": 1}) == {"seed": 3, "crossfade": 1.0}
    with pytest.raises(ControlError, match="crossfade"):
        check_changes({"seed": 3, "crossfade": 2})


def test_to_dict_round_trips_through_replace():
    controls = Controls().replace({"mode": "text", "size": "512x512", "seed": 9})
    plain = controls.to_dict()
    assert plain["mode"] == "text" and plain["size"] == "512x512"
    assert Controls().replace(plain) == controls


def test_prompt_mix_rules():
    base = Controls().replace({"prompt": "fog"})
    assert prompt_mix(base).describe() == "fog"
    assert not prompt_mix(base).is_blend
    # B alone blends from `prompt` (A defaults to it).
    mix = prompt_mix(base.replace({"prompt_b": "fire", "crossfade": 0.5}))
    assert (mix.a, mix.b, mix.weight, mix.is_blend) == ("fog", "fire", 0.5, True)
    assert mix.describe() == "fog -> fire @0.50"
    # An explicit A overrides `prompt`; crossfade 1 is all B.
    mix = prompt_mix(base.replace({"prompt_a": "ice", "prompt_b": "fire", "crossfade": 1.0}))
    assert (mix.a, mix.describe()) == ("ice", "fire")
    # Crossfade without B does nothing.
    assert prompt_mix(base.replace({"crossfade": 0.7})).weight == 0.0


def test_startup_controls_are_the_ones_a_running_stream_cannot_change():
    startup = {n for n, c in CONTROLS.items() if c.scope is Scope.STARTUP}
    assert startup == {"model", "size", "fps"}
