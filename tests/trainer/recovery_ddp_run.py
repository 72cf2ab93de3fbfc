"""Distil a pruned tiny Llama with RecoveryTrainer (plain python or under torchrun) and save the student's weights
from the main process. Every optimizer step sees all 8 rows (2 x 4 under two processes, 8 in one), so the two runs
take the same gradient steps. A third argument caches the teacher's top-k outputs first (each process computes a
share, all gather)."""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.trainer.test_recovery import L, pruned_pair, rows, targs  # noqa: E402

from hfprune.trainer import RecoveryConfig, RecoveryTrainer  # noqa: E402

out, batch = Path(sys.argv[1]), int(sys.argv[2])
top_k = int(sys.argv[3]) if len(sys.argv) > 3 else None
dense, result = pruned_pair()
args = targs(out, per_device_train_batch_size=batch, learning_rate=1e-2,
             **({"ddp_backend": "gloo"} if "WORLD_SIZE" in os.environ else {}))
trainer = RecoveryTrainer(args=args, pruned=result, teacher=dense, train_dataset=rows(8),
                          recovery=RecoveryConfig(max_tokens=3 * 8 * L, distillation_weight=0.5,
                                                  teacher_top_k=top_k))
trainer.train()
if trainer.is_world_process_zero():
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    state["_steps"] = torch.tensor(trainer.state.global_step)
    cache = trainer.distiller.cache
    state["_cached_rows"] = torch.tensor(len(cache) if cache is not None else -1)
    save_file(state, str(out / "student.safetensors"))
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
