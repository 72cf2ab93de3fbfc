"""Forward passes over calibration batches, shared by every step that runs the model (statistics, protection,
reconstruction, block scores, the broken-model probe). Imports no criterion, so criteria may use it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def run_model(model: nn.Module, batch: Any) -> Any:
    device = next(model.parameters()).device
    if isinstance(batch, dict):
        return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return model(batch.to(device))


def row_chunks(batch: Any, max_tokens: int) -> list[Any]:
    """A batch of token sequences split along its rows into pieces of at most ``max_tokens`` tokens (at least one
    row each), so that a backward pass keeps the graph of one piece at a time; other batches, and batches that
    fit, are returned whole."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        return [batch]
    rows = ids.shape[0]
    step = max(1, max_tokens // max(ids.shape[1], 1))
    if step >= rows:
        return [batch]
    if isinstance(batch, dict):
        return [{k: v[i:i + step] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v
                 for k, v in batch.items()} for i in range(0, rows, step)]
    return [batch[i:i + step] for i in range(0, rows, step)]


def primary_output(out: Any) -> torch.Tensor:
    """The tensor a criterion treats as the network output y: logits, else the last hidden state."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        v = getattr(out, key, None)
        if v is None and isinstance(out, dict):
            v = out.get(key)
        if isinstance(v, torch.Tensor):
            return v
    return out[0]


def with_lm_labels(model: nn.Module, batch: Any) -> Any:
    """A language model's own next-token labels for an unlabelled batch (padding ignored), so that one forward
    pass gives the loss; other batches unchanged."""
    if isinstance(batch, dict) and "input_ids" in batch and "labels" not in batch \
            and hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        labels = batch["input_ids"]
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        return {**batch, "labels": labels}
    return batch


@contextlib.contextmanager
def no_kv_cache(model: nn.Module):
    """Turn off the KV cache of a Hugging Face decoder while calibrating: it would keep every layer's keys and
    values of the batch alive for nothing."""
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if old:
        cfg.use_cache = False
    try:
        yield
    finally:
        if old:
            cfg.use_cache = old


def lm_loss(model: nn.Module, batches: list) -> float:
    """Token-weighted mean calibration loss (the model's own next-token labels for a language model)."""
    total, count = 0.0, 0.0
    with torch.no_grad(), no_kv_cache(model):
        for b in batches:
            b = with_lm_labels(model, b)
            out = run_model(model, b)
            w = float((b["labels"] != -100).sum())
            total += float(out.loss) * w
            count += w
    return total / max(count, 1.0)
