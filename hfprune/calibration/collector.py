"""Run calibration batches through the model and let the criterion accumulate its statistics.

Forward hooks hand each observed layer's input to `Criterion.accumulate`; with a ``grad_mode`` the outputs also get
tensor hooks that capture the gradients of one or more backward passes. Only the criterion's sufficient statistics
outlive a batch. Under `torch.distributed` (Accelerate, torchrun) every process takes its share of the batches and
the statistics are summed across processes before anything is decided, so every process ends with the same masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..criteria import Criterion, Stats
from .forward import no_kv_cache, primary_output, row_chunks, run_model, with_lm_labels
from ..utils.distributed import all_reduce_sum, my_share, rank_world
from ..errors import CalibrationError
from ..utils.logging import show_progress
from ..structure import Layer

EXACT_OUTPUTS = 16  # up to this many outputs per sample, G is computed exactly (one backward per output)
#: backward passes run on pieces of a batch of at most this many tokens, so that the graph (and for network-output
#: gradients the cotangents and per-layer gradient sums) of one piece is alive at a time. Network outputs: the
#: statistics are sums over samples, so only the Hutchinson draws differ from an unsplit batch. Loss gradients
#: (causal LMs only, `loss_pieces`): each piece's loss is weighted by its share of the batch's predicted tokens, so
#: the gradients, weight gradients included, are the unsplit batch's exactly.
OUTPUT_GRAD_TOKENS = 1024


def loss_pieces(model: nn.Module, batch: Any) -> list[tuple[Any, float]]:
    """``(piece, weight)`` pairs whose weighted losses sum to the batch's loss: a causal LM's next-token loss is the
    mean over the labels that are not -100 after the shift, so a piece weighs its share of those; any other model
    (whose loss hfprune cannot split exactly) runs its batch whole."""
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if not type(model).__name__.endswith("ForCausalLM") or not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        return [(batch, 1.0)]
    pieces = row_chunks(batch, OUTPUT_GRAD_TOKENS)
    counts = [float((p["labels"][:, 1:] != -100).sum()) for p in pieces]
    total = sum(counts)
    if len(pieces) == 1 or total == 0:
        return [(batch, 1.0)]
    return [(p, c / total) for p, c in zip(pieces, counts) if c > 0]


def _loss(out: Any) -> torch.Tensor:
    loss = getattr(out, "loss", None)
    if loss is None:
        raise CalibrationError("A loss-gradient criterion needs a loss: give labelled calibration data, or a model "
                               "with a language-modelling head, or use options={'output': 'network'} / {'output': 'layer'}.")
    return loss


def _cotangents(y: torch.Tensor, num_projections: int, seed: int) -> Iterator[torch.Tensor]:
    """Cotangents whose squared gradients sum to G = sum_k (dy_k/dz)^2 (exact, or Hutchinson), one at a time: each
    is as large as the output (for a language model, the logits). Their number is `_num_cotangents`."""
    k = y.shape[-1]
    if k <= EXACT_OUTPUTS:
        for i in range(k):
            v = torch.zeros_like(y)
            v[..., i] = 1
            yield v
        return
    g = torch.Generator(device="cpu").manual_seed(seed)
    scale = num_projections ** -0.5
    for _ in range(num_projections):
        yield (torch.randn(y.shape, generator=g) * scale).to(y.device, y.dtype)


def _num_cotangents(y: torch.Tensor, num_projections: int) -> int:
    return y.shape[-1] if y.shape[-1] <= EXACT_OUTPUTS else num_projections


def _check_finite(name: str, x: torch.Tensor) -> None:
    # A finite sum implies finite elements (an inf or NaN makes the sum inf or NaN), and one reduction costs far less
    # than isfinite(x).all() (about 35x on CPU); the exact check runs only when the sum is not finite (then either an
    # element is non-finite or the sum overflowed), so the outcome is the same as checking every element.
    if torch.isfinite(x.sum()):
        return
    if not torch.isfinite(x).all():
        raise CalibrationError(f"Non-finite values (NaN or inf) in the input of layer {name} during calibration; "
                               "check the model weights and the calibration data (e.g. fp16 overflow: use float32).")


def forward_stats_hook(criterion: Criterion, layer: Layer, stats: Stats):
    """A forward hook that checks a layer's input and adds it to ``stats`` (forward-only criteria)."""

    def fn(module: nn.Module, args: tuple, output: Any) -> None:
        x = args[0]
        _check_finite(layer.name, x)
        criterion.accumulate(layer, stats, x.detach())
    return fn


def all_reduce_stats(stats: dict[str, Stats]) -> None:
    """Sum every statistic across processes (no-op outside torch.distributed)."""
    for s in stats.values():
        for t in s.values():
            all_reduce_sum(t)


def _track_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: let gradients reach this layer's output even when nothing before it requires grad."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad:
        return (x.detach().requires_grad_(), *args[1:])
    return None


def _keep_grad(kept: list[torch.Tensor], g: torch.Tensor, squared: bool) -> None:
    """Keep one backward pass's output gradient, or add its square to the running sum (one buffer per layer)."""
    if not squared:
        kept.append(g)
        return
    g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g  # squares summed in float32 at least
    if kept:
        kept[0].addcmul_(g, g)
    else:
        kept.append(g.square())


def _accumulate(criterion: Criterion, layers: dict[str, Layer], stats: dict[str, Stats],
                captured: dict[str, dict[str, Any]], model: nn.Module, end_of_batch: bool = True) -> None:
    """Hand the captured inputs (and output gradients) of one forward/backward to the criterion, then drop them;
    at the end of a batch let the criterion read the weight gradients (summed over the batch's pieces)."""
    for name, entry in captured.items():
        criterion.accumulate(layers[name], stats[name], entry["x"], entry["grads"])
    captured.clear()
    if end_of_batch:
        for name in stats:
            criterion.after_backward(layers[name], stats[name])
        model.zero_grad(set_to_none=True)


def collect_statistics(model: nn.Module, criterion: Criterion, layers: dict[str, Layer], observed: list[str],
                       batches: list[Any], progress: bool = True) -> dict[str, Stats]:
    """Accumulate ``criterion``'s statistics for the ``observed`` layers over ``batches``; summed across ranks."""
    stats = {n: criterion.init_stats(layers[n]) for n in observed}
    if not observed:
        return stats
    grad_mode = criterion.grad_mode
    rank, world = rank_world()
    mine = my_share(batches)
    captured: dict[str, dict[str, Any]] = {}

    def hook(name: str):
        layer = layers[name]

        if grad_mode is None:
            return forward_stats_hook(criterion, layer, stats[name])

        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            _check_finite(name, x)
            entry = {"x": x.detach(), "grads": []}
            captured[name] = entry
            if output.requires_grad:
                output.register_hook(lambda g: _keep_grad(entry["grads"], layer.output_matrix(g.detach()),
                                                          criterion.squared_output_grads))
        return fn

    handles = [layers[n].module.register_forward_hook(hook(n)) for n in observed]
    was_training = model.training
    model.eval()
    requires = {p: p.requires_grad for p in model.parameters()}
    try:
        if grad_mode is not None:
            # Backward computes what the criterion reads and nothing else: the observed layers' inputs are made
            # to require grad, so gradients reach their outputs; weight gradients (about half of a backward
            # pass, and a model-sized .grad buffer) only where the criterion reads weight.grad.
            wanted = {id(layers[n].module.weight) for n in observed} if criterion.needs_weight_grads else set()
            for p in model.parameters():
                p.requires_grad_(id(p) in wanted)
            handles += [layers[n].module.register_forward_pre_hook(_track_input) for n in observed]
        ctx = torch.no_grad() if grad_mode is None else contextlib.nullcontext()
        bar = tqdm(mine, desc=f"calibrating ({criterion.name})", disable=not show_progress(progress), leave=False)
        for i, batch in enumerate(bar):
            with ctx, no_kv_cache(model):
                if grad_mode == "loss":
                    pieces = loss_pieces(model, with_lm_labels(model, batch))
                    for k, (piece, weight) in enumerate(pieces):
                        loss = _loss(run_model(model, piece))
                        (loss * weight if weight != 1.0 else loss).backward()
                        del loss
                        _accumulate(criterion, layers, stats, captured, model, end_of_batch=k == len(pieces) - 1)
                elif grad_mode is None:
                    run_model(model, batch)
                    _accumulate(criterion, layers, stats, captured, model)
                else:
                    for k, piece in enumerate(row_chunks(batch, OUTPUT_GRAD_TOKENS)):
                        y = primary_output(run_model(model, piece))
                        last = _num_cotangents(y, criterion.output_projections) - 1
                        seed = criterion.config.seed + i * world + rank + 1_000_003 * k  # k = 0: unsplit draws
                        for j, v in enumerate(_cotangents(y, criterion.output_projections, seed)):
                            y.backward(v, retain_graph=j < last)
                        del y
                        _accumulate(criterion, layers, stats, captured, model)
    finally:
        for h in handles:
            h.remove()
        for p, r in requires.items():
            p.requires_grad_(r)
        model.train(was_training)
    all_reduce_stats(stats)
    return stats
