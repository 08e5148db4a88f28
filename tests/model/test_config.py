import pytest

from model import CONFIGS, StreamDiTConfig


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
    ],
)
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        CONFIGS["tiny"].replace(**changes)


def test_unknown_keys_are_listed():
    with pytest.raises(ValueError, match=r"unknown StreamDiTConfig keys \['widht'\]"):
        StreamDiTConfig.from_dict({"widht": 3})
