import torch

from model.dit import fast_bf16_cpu
from streamdit_live.models import build_models, pick_dtype

CPU = torch.device("cpu")


def test_the_cpu_model_runs_in_bf16_where_the_cpu_has_it_and_tiny_in_fp32():
    fast = torch.bfloat16 if fast_bf16_cpu() else torch.float32
    models = build_models("cpu", CPU)
    assert next(models.dit.parameters()).dtype == fast == pick_dtype(CPU, models.config)
    assert next(models.ae.parameters()).dtype == torch.float32  # the codec stays fp32
    tiny = build_models("tiny", CPU)
    assert next(tiny.dit.parameters()).dtype == torch.float32


def test_an_explicit_dtype_wins():
    models = build_models("cpu", CPU, dtype=torch.float32)
    assert next(models.dit.parameters()).dtype == torch.float32
