import json

import pytest

from model import CONFIGS, StreamDiTConfig
from model.config import FULL_WINDOW, Prediction, TimeInput


def test_dict_round_trip_restores_tuples():
    for cfg in CONFIGS.values():
        assert StreamDiTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"dim": 100, "heads": 3}, r"dim \(100\) must be divisible by heads \(3\)"),
        ({"window": (0, 4, 4)}, r"window must be 3 positive ints.*\(0, 4, 4\)"),
        ({"sigma_min": 1.5}, "sigma_min must be in"),
        ({"dim": 60, "heads": 4}, "must be even for RoPE, got 15"),
        ({"time_input": "backwards"}, r"time_input must be one of \['data_at_one'"),
        ({"prediction": "x0"}, r"prediction must be one of"),
        ({"ffn_dim": -1}, "ffn_dim must be >= 0"),
    ],
)
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        CONFIGS["tiny"].replace(**changes)


def test_unknown_keys_are_listed():
    with pytest.raises(ValueError, match=r"unknown StreamDiTConfig keys \['widht'\]"):
        StreamDiTConfig.from_dict({"widht": 3})


def test_wan_switches_survive_the_json_of_checkpoint_metadata():
    cfg = CONFIGS["tiny"].replace(
        ffn_dim=40,
        head_table=True,
        window=FULL_WINDOW,
        time_input=TimeInput.NOISE_AT_ONE,
        prediction=Prediction.NOISE_MINUS_DATA,
    )
    back = StreamDiTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.time_input is TimeInput.NOISE_AT_ONE
    assert back.mlp_dim == 40 and CONFIGS["tiny"].mlp_dim == 128


def test_a_config_saved_before_the_wan_switches_loads_with_them_off():
    old = CONFIGS["cpu"].to_dict()
    for key in ("ffn_dim", "head_table", "time_input", "prediction"):
        del old[key]
    assert StreamDiTConfig.from_dict(old) == CONFIGS["cpu"]
