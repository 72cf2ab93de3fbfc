"""Calibrate a tiny Llama (plain python or under torchrun, gloo on CPU) and save this process's statistics and masks.

Full mode (wanda; elimination-compensation with network-output gradients) and sequential mode (wanda, relative
importance): `test_scale.py` checks that 2 processes hold the same sums as 1 process, up to summation order.
"""

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.models import calibration, tiny_model  # noqa: E402

from hfprune import PruningConfig, prune  # noqa: E402
from hfprune.calibration.collector import collect_statistics  # noqa: E402
from hfprune.calibration.data import prepare_calibration  # noqa: E402
from hfprune.calibration.sequential import block_statistics  # noqa: E402
from hfprune.criteria import get_criterion  # noqa: E402
from hfprune.structure import target_layers  # noqa: E402

out = sys.argv[1]
if "WORLD_SIZE" in os.environ:
    dist.init_process_group("gloo")
rank = dist.get_rank() if dist.is_initialized() else 0
torch.set_num_threads(1)
saved = {}
for criterion, mode, kw in (("wanda", "full", {}), ("elimination_compensation", "full", {"options": {"output": "network"}}),
                            ("wanda", "sequential", {}), ("relative_importance", "sequential", {})):
    config = PruningConfig(criterion=criterion, calibration={"mode": mode, "num_samples": 8, "seq_len": 12, "batch_size": 2},
                           **kw)
    model = tiny_model("llama")
    crit = get_criterion(config)
    layers = target_layers(model, config)
    observed = crit.observed_layers(layers, None)
    batches = prepare_calibration(calibration("llama"), model, config).batches
    if mode == "full":
        stats = collect_statistics(model, crit, layers, observed, batches, progress=False)
    else:
        stats = {n: s for _, block in block_statistics(model, crit, layers, observed, batches, False)
                 for n, s in block.items()}
    saved.update({f"{criterion}/{mode}/{n}/{k}": v.cpu().contiguous() for n, s in stats.items() for k, v in s.items()})
    masks = prune(model, config, calibration_data=calibration("llama"), progress=False).masks
    saved.update({f"mask/{criterion}/{mode}/{n}": m.to(torch.uint8).contiguous() for n, m in masks.items()})
os.makedirs(out, exist_ok=True)
save_file(saved, os.path.join(out, f"stats_rank{rank}.safetensors"))
if dist.is_initialized():
    dist.destroy_process_group()
