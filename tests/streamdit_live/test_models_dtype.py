import torch

from model import CONFIGS
from model.dit import BF16_CPU_MIN_DIM, fast_bf16_cpu
from streamdit_live.models import build_models, pick_dtype

CPU = torch.device("cpu")


def test_the_cpu_model_runs_in_bf16_where_the_cpu_has_it_and_it_is_wide_enough():
    wide = CONFIGS["cpu"].dim >= BF16_CPU_MIN_DIM  # the 1.6 M cpu model (dim 128) is not
    fast = torch.bfloat16 if fast_bf16_cpu() and wide else torch.float32
    models = build_models("cpu", CPU)
    assert next(models.dit.parameters()).dtype == fast == pick_dtype(CPU, models.config)
    assert next(models.ae.parameters()).dtype == torch.float32  # the codec stays fp32
    tiny = build_models("tiny", CPU)
    assert next(tiny.dit.parameters()).dtype == torch.float32


def test_an_explicit_dtype_wins():
    models = build_models("cpu", CPU, dtype=torch.float32)
    assert next(models.dit.parameters()).dtype == torch.float32
