import subprocess
import sys

import pytest

_FAULTS = """
import resource, sys, torch
from model import CONFIGS, StreamDiT
from model.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
cfg = CONFIGS["tiny"]
net = StreamDiT(cfg).eval()
x = torch.randn(1, cfg.latent_channels, cfg.latent_frames, 32, 32)
t, text = torch.rand(1, cfg.latent_frames), torch.randn(1, cfg.text_len, cfg.text_dim)
with torch.inference_mode():
    for _ in range(3):
        net(x, t, text)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x, t, text)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_kept_freed_memory_spares_the_page_faults_of_every_model_call():
    def faults(mode: str) -> float:
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
        )
        return float(done.stdout.split()[-1])

    plain, kept = faults("plain"), faults("keep")
    assert plain > 50 and kept < plain / 10, (plain, kept)
