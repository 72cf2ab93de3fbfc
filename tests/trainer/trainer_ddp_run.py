"""Run one small PruningTrainer job (plain python or under torchrun) and save this process's masks."""

import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.trainer import make_trainer  # noqa: E402

out, batch = sys.argv[1], int(sys.argv[2])
rank = int(os.environ.get("RANK", 0))
schedule = {"schedule": "iterative", "start_step": 0, "end_step": 3, "pruning_steps": 2}
trainer = make_trainer(os.path.join(out, "run"), {"training": schedule}, max_steps=4, batch=batch,
                       **({"ddp_backend": "gloo"} if "WORLD_SIZE" in os.environ else {}))
trainer.train()
save_file({k: v.to(torch.uint8).contiguous() for k, v in trainer.pruning_masks.masks.items()},
          os.path.join(out, f"masks_rank{rank}.safetensors"))
if torch.distributed.is_initialized():  # a clean shutdown: a process group left open can abort at exit
    torch.distributed.destroy_process_group()
