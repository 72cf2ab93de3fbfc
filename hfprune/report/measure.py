"""Parameters and MACs of a model for a stated input shape (the numbers of the report and the model card)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> tuple[int, int]:
    """(stored parameters, non-zero parameters); tied parameters counted once."""
    seen, total, nonzero = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def dummy_input(model: nn.Module, seq_len: int, example: Any = None) -> tuple[Any, list[int]]:
    """One input of batch size 1 for counting MACs, and its shape as reported."""
    cfg = getattr(model, "config", None)
    if getattr(model, "main_input_name", None) == "pixel_values" and cfg is not None:
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        return {"pixel_values": torch.zeros(1, cfg.num_channels, size, size)}, [1, cfg.num_channels, size, size]
    if cfg is not None and getattr(cfg, "vocab_size", None):
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or seq_len
        n = min(seq_len, limit)
        ids = torch.zeros(1, n, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, [1, n]
    if isinstance(example, dict):
        example = next(iter(example.values()))
    if isinstance(example, torch.Tensor):
        return example[:1], list(example[:1].shape)
    raise ValueError("Cannot build an input to count MACs: pass example_inputs.")


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2, every matmul and convolution, attention included)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            if isinstance(inputs, dict):
                model(**{k: v.to(device) for k, v in inputs.items()})
            else:
                model(inputs.to(device))
    finally:
        model.train(was)
    return counter.get_total_flops() // 2
