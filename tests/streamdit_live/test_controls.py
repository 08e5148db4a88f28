"""The control schema as pure functions: declaration, checking, error sentences, prompt mix."""

from __future__ import annotations

import dataclasses

import pytest

from streamdit_live.controls import (
    CONTROLS,
    MODEL_CHOICES,
    SHIPPED_MODEL,
    ControlError,
    Controls,
    Mode,
    Scope,
    Size,
    check_changes,
    preset_prompt_state,
    prompt_changes,
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


def test_the_default_model_is_the_shipped_one_and_its_help_tells_the_sizes_apart():
    assert Controls().model == SHIPPED_MODEL == "cpu"
    words = CONTROLS["model"].help
    for said in ("cpu (1.6 M parameters), the shipped model", "real time at 256x256 on 2 CPU",
                 "tiny (0.17 M), for tests, random weights only", "4b (the paper's scale",
                 "random weights unless you bring your own"):  # fmt: skip
        assert said in words, said


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
    assert len(message) < 200  # a 5000-character prompt is cut, not echoed whole


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


def effective(controls: Controls) -> str:
    return prompt_mix(controls).describe()


def test_a_plain_prompt_ends_ab_mixing():
    """Issue 8: after a preset set A and B, 375 prompts changed nothing (A shadowed them)."""
    deck = Controls().replace({"prompt_a": "chrome", "prompt_b": "fire", "crossfade": 0.4})
    changes = prompt_changes(deck, {"prompt": "rain"})
    assert changes == {"prompt": "rain", "prompt_a": "", "prompt_b": "", "crossfade": 0.0}
    assert effective(deck.replace(changes)) == "rain"
    # The deck's own controls keep it going; a prompt that comes with A or B is part of it.
    assert prompt_changes(deck, {"prompt_a": "ice"}) == {"prompt_a": "ice"}
    assert prompt_changes(deck, {"crossfade": 1.0}) == {"crossfade": 1.0}
    both = {"prompt": "rain", "prompt_b": "snow"}
    assert prompt_changes(deck, both) == both


def test_every_accepted_prompt_message_shows_in_the_effective_prompt():
    """Whatever state came before, a plain prompt is what the status reports after it."""
    states = [
        Controls(),
        Controls().replace({"prompt_b": "fire", "crossfade": 1.0}),
        Controls().replace({"prompt_a": "a", "prompt_b": "b", "crossfade": 0.0}),
        Controls().replace({"prompt_a": "a", "prompt_b": "b", "crossfade": 0.5}),
    ]
    for state in states:
        after = state.replace(prompt_changes(state, {"prompt": "neon"}))
        assert effective(after) == "neon"


def test_a_crossfade_that_would_change_nothing_is_refused():
    single = Controls().replace({"prompt": "fog"})
    with pytest.raises(ControlError, match=r"^crossfade has no effect without a prompt B"):
        prompt_changes(single, {"crossfade": 0.5})
    same = single.replace({"prompt_b": "fog"})  # B equal to A: nothing to blend towards
    with pytest.raises(ControlError, match="crossfade has no effect"):
        prompt_changes(same, {"crossfade": 0.5})
    # 0 is all A, which is what is shown: a preset or a plain prompt leaves it there.
    assert prompt_changes(single, {"crossfade": 0.0}) == {"crossfade": 0.0}
    # Together with a B in the same bundle it is fine, and so is B then crossfade.
    assert prompt_changes(single, {"prompt_b": "fire", "crossfade": 0.5})["crossfade"] == 0.5
    with_b = single.replace({"prompt_b": "fire"})
    assert effective(with_b.replace(prompt_changes(with_b, {"crossfade": 0.5}))) == (
        "fog -> fire @0.50"
    )


def test_a_preset_replaces_the_whole_prompt_state_or_none_of_it():
    deck = Controls().replace({"prompt_a": "chrome", "prompt_b": "fire", "crossfade": 0.7})
    look = preset_prompt_state({"prompt": "dream", "strength": 0.8})
    assert look == {
        "prompt": "dream",
        "prompt_a": "",
        "prompt_b": "",
        "crossfade": 0.0,
        "strength": 0.8,
    }
    assert effective(deck.replace(look)) == "dream"
    ab = preset_prompt_state({"prompt_a": "x", "prompt_b": "y"})
    assert ab["prompt"] == CONTROLS["prompt"].default and ab["crossfade"] == 0.0
    # A preset with no prompt at all (a performance preset) leaves the look alone.
    assert preset_prompt_state({"strength": 0.3}) == {"strength": 0.3}
