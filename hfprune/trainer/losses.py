"""Loss terms `PruningTrainer` adds to the task loss: the relative-importance and group-lasso regularisers, and
distillation from the dense model.

Group lasso (Yuan & Lin) sums the L2 norm of every unit's weights (its producer rows and consumer columns), which
drives whole units toward zero so that removing them later costs little. Removed units are left out (they are
zero, and the norm has no gradient at zero). Unstructured pruning has one weight per group: the term is the L1 norm.

Relative importance (RI) is `hfprune.criteria.relative_importance.ri_regularizer` (entropy form) summed over the
layers the RI criterion scores: the target layers (unstructured) or the consumers of the pruned units (structured,
e.g. the FFN down projection for neurons). It needs each layer's input in the current batch, which
`LayerInputs` keeps from the task loss's own forward pass (no second forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..criteria.relative_importance import ri_regularizer
from ..structure import Layer
from .masks import TrainingMasks

_EPS = 1e-12


def _unit_squares(model: nn.Module, group, keep: torch.Tensor) -> torch.Tensor:
    """Sum of squared weights owned by each kept unit of ``group``."""
    total = 0
    for c in group.couplings:
        if c.side == "param":
            continue
        layer = Layer(c.layer, model.get_submodule(c.layer))
        idx = c.index[keep.cpu()].to(layer.weight.device)  # [kept, width]
        if c.side == "out":
            w = layer.weight_matrix()[idx]  # [kept, width, in]
            total = total + w.pow(2).sum(dim=(1, 2))
        elif layer.kind == "conv2d":
            w = layer.module.weight[:, idx]  # [out, kept, width, kh, kw]
            total = total + w.pow(2).sum(dim=(0, 2, 3, 4))
        else:
            w = layer.weight_matrix()[:, idx]  # [out, kept, width]
            total = total + w.pow(2).sum(dim=(0, 2))
    return total


def group_lasso(model: nn.Module, masks: TrainingMasks) -> torch.Tensor:
    """Sum over kept units of the L2 norm of their weights (L1 over kept weights when unstructured)."""
    terms = []
    if masks.groups is None:
        for name, keep in masks.masks.items():
            w = masks.layers[name].weight_matrix()
            terms.append(w[keep.to(w.device)].abs().sum())
    else:
        for g in masks.groups:
            keep = masks.masks[g.name]
            if keep.any():
                terms.append((_unit_squares(model, g, keep) + _EPS).sqrt().sum())
    return torch.stack(terms).sum()


def ri_layers(masks: TrainingMasks) -> dict[str, Layer]:
    """The layers whose weights the RI term shapes: those the RI criterion scores for this pruning."""
    if masks.groups is None:
        return dict(masks.layers)
    names = sorted({c.layer for g in masks.groups for c in g.couplings if c.side == "in"} & set(masks.layers))
    return {n: masks.layers[n] for n in names}


class LayerInputs:
    """Forward pre-hooks keeping the input (detached) of each of ``layers`` seen inside `capture()`; elsewhere
    (evaluation, MAC counting, a gradient-checkpointing recompute, the user's own forwards) they keep nothing."""

    def __init__(self, layers: dict[str, Layer]) -> None:
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.active = False
        self.handles = [l.module.register_forward_pre_hook(self._hook(n)) for n, l in layers.items()]

    def _hook(self, name: str):
        def keep(module: nn.Module, args: tuple) -> None:
            if self.active and args and isinstance(args[0], torch.Tensor):
                self.inputs[name] = args[0].detach()
        return keep

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Keep the inputs of the forward passes run inside; yields the dict they land in (fresh each time)."""
        self.inputs, self.active = {}, True
        try:
            yield self.inputs
        finally:
            self.inputs, self.active = {}, False  # the caller's dict lives on; this object keeps no activations

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.inputs = [], {}


def relative_importance(layers: dict[str, Layer], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over ``layers`` of the RI entropy term on this batch's inputs (0 when no input was seen)."""
    terms = [ri_regularizer(layers[n], x) for n, x in sorted(inputs.items())]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.to(terms[0].device) for t in terms]).sum()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T² (Hinton et al.), averaged over the
    positions ``mask`` keeps (every position when None; padding should be left out)."""
    k = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, k).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, k).float() / temperature, dim=-1)
    if mask is not None:
        keep = mask.to(s.device).bool().reshape(-1)
        s, t = s[keep], t[keep]
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def top_k_distillation_loss(student_logits: torch.Tensor, top_logprobs: torch.Tensor, top_ids: torch.Tensor,
                            tail: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`distillation_loss` from cached teacher outputs (hfprune extension, see
    `hfprune.trainer.recovery.teacher_cache`): KL(teacher || student) over the teacher's top-k tokens plus one
    bucket holding every other token, scaled by T², averaged over the kept positions. ``top_logprobs`` and
    ``tail`` are the teacher's log-probabilities at ``temperature`` (normalised over the whole vocabulary). Equal
    to `distillation_loss` when k is the vocabulary size, never larger otherwise."""
    k, v = top_ids.shape[-1], student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)
    t_top, ids, t_tail = top_logprobs.reshape(-1, k).float(), top_ids.reshape(-1, k), tail.reshape(-1).float()
    if mask is not None:
        keep = mask.to(s.device).bool().reshape(-1)
        s, t_top, ids, t_tail = s[keep], t_top[keep], ids[keep], t_tail[keep]
    kl = (t_top.exp() * (t_top - s.gather(-1, ids))).sum(-1)
    if k < v:  # the bucket of the other tokens (empty, and its logsumexp's gradient NaN, when k covers the vocabulary)
        s_tail = s.scatter(-1, ids, float("-inf")).logsumexp(-1)
        kl = kl + t_tail.exp() * (t_tail - s_tail)
    return kl.sum() / max(s.shape[0], 1) * temperature ** 2
