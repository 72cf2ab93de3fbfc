"""Scores of whole transformer blocks (``granularity="layers"``), residual-stream channels (``"hidden"``) and MoE
experts (``"experts"``), in their own registries (`BLOCK_SCORES`, `CHANNEL_SCORES`, `EXPERT_SCORES`), chosen by
``width_depth.block_score`` / ``.channel_score`` / ``.expert_score``.

Blocks (higher = keep):
- ``block_influence`` (ShortGPT, Men et al. 2024): ``BI_k = 1 - E_t cos(x_k(t), x_{k+1}(t))`` between a block's
  input and output hidden states, one calibration pass for all blocks;
- ``skip_loss``: calibration loss with block k bypassed minus the full model's (one pass per block). Models without
  a loss (encoders without labels): ``1 - E_t cos`` of the final output with and without the block (hfprune
  extension, the output-space analogue);
- ``magnitude`` / ``random`` (baselines, hfprune extension on blocks): sum of ``|W|`` (or ``W^2``) over the
  block's weight layers; seeded uniform scores.

Residual channels: ``minitron`` (Muralidharan et al. 2024): ``sum over the norms feeding attention / MLP of
mean_t |y_c(t)|`` (norm outputs); ``magnitude``: ``|W|`` summed over every weight slice the channel owns
(embedding column, reader columns, writer rows); ``random``. Statistics are sums over tokens (reductions), never
per-sample copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..criteria.baselines import seeded_generator
from ..calibration.forward import no_kv_cache, primary_output, run_model, with_lm_labels
from ..structure.experts import MoEBlock, expert_output
from ..structure.layers import Layer, find_layers


def _hidden(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _token_mask(batch: Any, like: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens]`` weights: the attention mask when the batch has one and it matches, else ones."""
    m = batch.get("attention_mask") if isinstance(batch, dict) else None
    if m is not None and m.shape == like.shape[:2]:
        return m.to(like.device, torch.float32)
    return torch.ones(like.shape[:2], device=like.device)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


@torch.no_grad()
def block_influence(model: nn.Module, blocks: nn.ModuleList, batches: list, seed: int) -> torch.Tensor:
    """ShortGPT Block Influence: blocks that barely change the hidden state score low."""
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}
    current: dict[str, Any] = {}

    def pre(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return fn

    def post(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            y = _hidden(out)
            w = _token_mask(current["batch"], y)
            sums[i] += float(((1 - _cos(inputs.pop(i), y)) * w).sum())
        return fn

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with no_kv_cache(model):
            for batch in batches:
                current["batch"] = batch
                out = run_model(model, batch)
                count += float(_token_mask(batch, primary_output(out)).sum())
    finally:
        for h in handles:
            h.remove()
    return sums / count.clamp(min=1)


@contextlib.contextmanager
def bypassed(block: nn.Module) -> Iterator[None]:
    """Run the model with ``block`` replaced by the identity on its hidden states (other outputs kept)."""

    def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *out[1:]) if isinstance(out, tuple) else x

    handle = block.register_forward_hook(fn, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def skip_loss(model: nn.Module, blocks: nn.ModuleList, batches: list, seed: int) -> torch.Tensor:
    """Calibration-loss increase when the block is bypassed: exact, one calibration pass per block."""
    batches = [with_lm_labels(model, b) for b in batches]
    with no_kv_cache(model):
        reference = [run_model(model, b) for b in batches]
        with_loss = all(getattr(r, "loss", None) is not None for r in reference)
        base = _loss(reference, reference, batches, with_loss)
        if not with_loss:  # keep only the outputs, not every hidden state
            reference = [primary_output(r) for r in reference]
        scores = []
        for block in blocks:
            with bypassed(block):
                outs = [run_model(model, b) for b in batches]
            scores.append(_loss(outs, reference, batches, with_loss) - base)
    return torch.tensor(scores, dtype=torch.float64)


def _loss(outs: list, reference: list, batches: list, with_loss: bool) -> float:
    if with_loss:  # token-weighted mean of the batches' mean losses
        weights = [float((b["labels"] != -100).sum()) for b in batches]
        return sum(float(o.loss) * w for o, w in zip(outs, weights)) / max(sum(weights), 1)
    total, count = 0.0, 0.0
    for o, r, b in zip(outs, reference, batches):
        y, ref = primary_output(o), (r if isinstance(r, torch.Tensor) else primary_output(r))
        w = _token_mask(b, y)
        total += float(((1 - _cos(y, ref)) * w).sum())
        count += float(w.sum())
    return total / max(count, 1)


def magnitude_blocks(model: nn.Module, blocks: nn.ModuleList, batches: list, seed: int) -> torch.Tensor:
    """Sum of ``|W|`` over each block's weight layers (hfprune extension of the magnitude baseline)."""
    return torch.tensor([sum(float(l.weight.detach().float().abs().sum()) for l in find_layers(b).values())
                         for b in blocks], dtype=torch.float64)


def random_scores(n: int, seed: int, key: str) -> torch.Tensor:
    return torch.rand(n, generator=seeded_generator(seed, key)).double()


def random_blocks(model: nn.Module, blocks: nn.ModuleList, batches: list, seed: int) -> torch.Tensor:
    return random_scores(len(blocks), seed, "blocks")


def minitron_channels(rs: Any, stats: dict[str, Any] | None, seed: int) -> torch.Tensor:
    """Minitron embedding-channel importance: mean over tokens of the norm outputs' ``|y_c|``."""
    return stats["act"] / max(stats["tokens"], 1.0)  # type: ignore[index]


def magnitude_channels(rs: Any, stats: dict[str, Any] | None, seed: int) -> torch.Tensor:
    """``|W|`` summed over every weight slice a residual channel owns (hfprune extension)."""
    total = torch.zeros(rs.width, dtype=torch.float64)
    for m in rs.embeddings.values():
        total += m.weight.detach().double().abs().sum(0).cpu()
    for n, m in rs.readers.items():
        total += Layer(n, m).weight_matrix().detach().double().abs().sum(0).cpu()
    for n, m in rs.writers.items():
        total += Layer(n, m).weight_matrix().detach().double().abs().sum(1).cpu()
    return total


def random_channels(rs: Any, stats: dict[str, Any] | None, seed: int) -> torch.Tensor:
    return random_scores(rs.width, seed, "hidden")


@dataclass(frozen=True)
class AxisScore:
    """One registered block or channel score: the function and whether it reads calibration data."""

    score: Callable[..., torch.Tensor]
    needs_data: bool


#: ``width_depth.block_score`` -> score(model, blocks, batches, seed), higher = keep
BLOCK_SCORES: dict[str, AxisScore] = {
    "block_influence": AxisScore(block_influence, True),
    "skip_loss": AxisScore(skip_loss, True),
    "magnitude": AxisScore(magnitude_blocks, False),
    "random": AxisScore(random_blocks, False),
}
#: ``width_depth.channel_score`` -> score(residual stream, hidden statistics, seed), higher = keep
CHANNEL_SCORES: dict[str, AxisScore] = {
    "minitron": AxisScore(minitron_channels, True),
    "magnitude": AxisScore(magnitude_channels, False),
    "random": AxisScore(random_channels, False),
}


@torch.no_grad()
def expert_statistics(model: nn.Module, blocks: list[MoEBlock], batches: list) -> dict[str, dict[str, torch.Tensor]]:
    """One calibration pass, per MoE block and expert: ``count`` (tokens routed to it, its frequency) and ``reap``
    (sum over those tokens of the router weight times the norm of the expert's output). A pre-hook on the fused
    experts receives the tokens, the chosen experts and their weights exactly as the model uses them; each chosen
    expert is run again on its tokens (the fused module sums the outputs, so they cannot be read off it)."""
    stats = {b.name: {"count": torch.zeros(b.num_experts, dtype=torch.float64),
                      "reap": torch.zeros(b.num_experts, dtype=torch.float64)} for b in blocks}
    current: dict[str, Any] = {}

    def hook(block: MoEBlock):
        def fn(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
            w = args[2] if len(args) > 2 else kwargs["top_k_weights"]
            valid = _token_mask(current["batch"], current["ids"]).reshape(-1) if current["ids"] is not None else None
            if valid is None or valid.numel() != x.shape[0]:
                valid = torch.ones(x.shape[0], device=x.device)
            st = stats[block.name]
            for e in idx.unique().tolist():
                tok, pos = torch.where(idx == e)
                keep = valid[tok] > 0
                tok, pos = tok[keep], pos[keep]
                if tok.numel() == 0:
                    continue
                out = expert_output(module, e, x[tok])
                st["count"][e] += tok.numel()
                st["reap"][e] += float((w[tok, pos].float() * out.float().norm(dim=-1)).sum())
        return fn

    handles = [b.experts.register_forward_pre_hook(hook(b), with_kwargs=True) for b in blocks]
    try:
        with no_kv_cache(model):
            for batch in batches:
                current["batch"] = batch
                ids = batch.get("input_ids") if isinstance(batch, dict) else None
                current["ids"] = ids[..., None] if ids is not None else None
                run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def reap_experts(model: nn.Module, blocks: list[MoEBlock], batches: list) -> dict[str, torch.Tensor]:
    """REAP (Lasby et al. 2025, "REAP the Experts"): mean over the tokens routed to an expert of its router
    weight times its output norm; experts never chosen score 0."""
    stats = expert_statistics(model, blocks, batches)
    return {n: st["reap"] / st["count"].clamp(min=1) for n, st in stats.items()}


def frequency_experts(model: nn.Module, blocks: list[MoEBlock], batches: list) -> dict[str, torch.Tensor]:
    """How many calibration tokens the router sends to each expert (the frequency baseline)."""
    return {n: st["count"] for n, st in expert_statistics(model, blocks, batches).items()}


#: ``width_depth.expert_score`` -> score(model, MoE blocks, batches) -> {block: [experts]}, higher = keep
EXPERT_SCORES: dict[str, AxisScore] = {
    "reap": AxisScore(reap_experts, True),
    "frequency": AxisScore(frequency_experts, True),
}


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@torch.no_grad()
def hidden_statistics(model: nn.Module, scored: tuple[str, ...], norms: tuple[str, ...],
                      batches: list) -> dict[str, Any]:
    """One calibration pass: ``act`` = sum over the scored norms and tokens of ``|y_c|`` (Minitron), ``tokens``,
    and ``sq[norm]`` = sum over tokens of ``x_c^2`` of each residual norm's input (for RMS rescaling)."""
    stats: dict[str, Any] = {"act": None, "tokens": 0.0, "sq": {}}
    current: dict[str, Any] = {}

    def hook(name: str, score: bool):
        def fn(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x = args[0]
            w = _token_mask(current["batch"], x).reshape(-1)
            sq = w @ x.reshape(-1, x.shape[-1]).float().square()
            stats["sq"][name] = stats["sq"].get(name, 0) + sq.double().cpu()
            if score:
                a = (w @ out.reshape(-1, out.shape[-1]).float().abs()).double().cpu()
                stats["act"] = a if stats["act"] is None else stats["act"] + a
        return fn

    handles = [m.register_forward_hook(hook(n, _last(n) in scored)) for n, m in model.named_modules()
               if _last(n) in norms and hasattr(m, "weight")]
    try:
        with no_kv_cache(model):
            for batch in batches:
                current["batch"] = batch
                first = batch["input_ids"] if isinstance(batch, dict) and "input_ids" in batch else None
                run_model(model, batch)
                if first is not None:
                    stats["tokens"] += float(_token_mask(batch, first[..., None]).sum())
    finally:
        for h in handles:
            h.remove()
    return stats
