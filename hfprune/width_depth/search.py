"""`target_params`: choose the per-axis fractions that reach a parameter budget with the lowest held-out
calibration loss *after* reconstruction.

Strategy (Minitron's "many candidates, cheap screen, expensive re-score of the best"; docs/criteria.md):

1. **Grid.** Depths: ``layers`` removed in {0, Lmax/4, Lmax/2, 3Lmax/4, Lmax} (Lmax: the most blocks removable
   before the target is passed by depth alone), or only the smallest sufficient count when ``layers`` is the only
   axis. Width mixes (hidden, neurons) with both axes: (0, 1), (0.5, 1), (1, 1), (1, 0.5), (1, 0), i.e. from
   neurons only to residual width only; the one present otherwise. Heads: 0 and one KV group (or one head) removed,
   when ``heads`` is pruned. For each, the smallest common scale ``s`` whose architecture is at or below the target
   (bisection on the exact parameter count of a meta-device skeleton pruned with the same code, so no weight is
   touched); with both axes the neuron fraction is then lowered again (bisection, width fixed) because residual
   widths move in coarse steps (multiples of the head count and ``round_to``).
2. **Screen.** Candidates within `tolerance` below the target (1%, or one FFN width step where ``round_to`` makes
   steps coarser: SmolLM2's FFN in multiples of 128 moves 6.6M parameters a step) are pruned on a copy (scores of the unpruned model) and
   scored by the calibration loss on held-out batches (from the last quarter of the batches), without refit.
3. **Re-score after reconstruction.** The ``width_depth.search_refits`` best are refit on a share of the other
   batches (`SEARCH_FIT_SAMPLES` sequences; `hfprune.reconstruction.dense_refit`) and scored on the held-out
   batches again; then the grid neighbours of the winner (one depth step either way, the next width mix either
   way) likewise. The lowest loss after refit wins; without reconstruction the screen's loss decides.

Never above the target. The report lists every candidate with its parameters, screen loss and refit loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

from ..config.pruning_config import PruningConfig
from .blocks import block_list
from ..errors import ConfigError
from ..structure.residual import residual_stream
from ..calibration.forward import lm_loss
from ..structure import find_groups
from .plan import Plan, Scores, apply_plan, hidden_multiple, prune_to_plan, unit_config

#: width mixes (hidden share, neuron share), ordered from neurons only to residual width only
_MIXES = ((0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (1.0, 0.5), (1.0, 0.0))
_DEPTH_STEPS = 4  # the depth grid: Lmax in quarters
SEARCH_FIT_SAMPLES = 8  # calibration sequences each search refit sees
SEARCH_HELD_SAMPLES = 8  # calibration sequences each candidate is scored on
_BISECTION_STEPS = 12
_MAX_WIDTH_FRACTION = 0.9


def skeleton(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))


def stored_params(model: nn.Module) -> int:
    """Parameters counted once each (tied weights once), meta tensors included."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


def plan_params(model: nn.Module, config: PruningConfig, plan: Plan) -> int:
    """Exact parameter count of ``model`` after ``plan``, computed on a meta-device skeleton."""
    s = skeleton(model)
    apply_plan(s, config, plan, None)
    return stored_params(s)


def _width_plan(model: nn.Module, config: PruningConfig, base: Plan, scale: float, mix: tuple[float, float]) -> Plan:
    plan = dataclasses.replace(base, mix=mix)
    if "hidden" in config.parts:
        width = residual_stream(model).width
        keep = width - int(round(scale * mix[0] * width))
        r = hidden_multiple(model, config, base.heads)
        plan.hidden = max(r, min(width, int(math.ceil(keep / r) * r)))
    if "neurons" in config.parts:
        plan.neurons = min(scale * mix[1], _MAX_WIDTH_FRACTION)
    return plan


def _fit(model: nn.Module, config: PruningConfig, base: Plan, target: int, mix: tuple[float, float]) -> Plan | None:
    """The least-pruned width scale for ``base`` at or below ``target`` (None when even the widest cut is above)."""
    top = _MAX_WIDTH_FRACTION / max(mix)
    if plan_params(model, config, _width_plan(model, config, base, top, mix)) > target:
        return None
    lo, hi = 0.0, top
    if plan_params(model, config, _width_plan(model, config, base, lo, mix)) <= target:
        hi = lo
    for _ in range(_BISECTION_STEPS):
        if hi - lo < 1e-4:
            break
        mid = (lo + hi) / 2
        if plan_params(model, config, _width_plan(model, config, base, mid, mix)) <= target:
            hi = mid
        else:
            lo = mid
    plan = _width_plan(model, config, base, hi, mix)
    if "neurons" in config.parts and "hidden" in config.parts and mix[1] > 0:  # refine the finer axis
        lo, hi = 0.0, plan.neurons
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            if plan_params(model, config, dataclasses.replace(plan, neurons=mid)) <= target:
                hi = mid
            else:
                lo = mid
        plan.neurons = hi
    plan.params = plan_params(model, config, plan)
    return plan


def _key(plan: Plan) -> tuple:
    """The architecture a candidate builds: blocks, residual width, heads and parameter count (which fixes the FFN
    width given the rest). Fractions are not compared: two that round to the same width on the grid (e.g. 3e-5
    and 6e-5 of 1,536 neurons in steps of 128: none removed) are one candidate, screened once."""
    return plan.layers, plan.hidden, plan.heads, plan.params


def _head_fractions(model: nn.Module, config: PruningConfig) -> list[float]:
    if "heads" not in config.parts:
        return [0.0]
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    units = kv if kv < heads and config.gqa_mode == "kv_groups" else (heads // kv if kv < heads else heads)
    return [0.0, 1.0 / units] if units > 1 else [0.0]


def _first_at_or_below(count, n: int, target: int) -> int:
    """Smallest k in [0, n) with ``count(k) <= target`` (``count`` decreasing in k), n when none."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _depths(model: nn.Module, config: PruningConfig, target: int) -> list[int]:
    parts = config.parts
    if "layers" not in parts:
        return [0]
    n = len(block_list(model)[1])
    first = _first_at_or_below(lambda k: plan_params(model, config, Plan(layers=k)), n, target)
    if not ("hidden" in parts or "neurons" in parts) and "heads" not in parts:
        return [first] if first < n else []
    lmax = max(first - 1, 0)  # the most blocks removable with depth alone still above the target
    return sorted({int(round(lmax * i / _DEPTH_STEPS)) for i in range(_DEPTH_STEPS + 1)})


def _mixes(config: PruningConfig) -> tuple[tuple[float, float], ...]:
    return _MIXES if "hidden" in config.parts and "neurons" in config.parts else ((1.0, 1.0),)


def _candidate(model: nn.Module, config: PruningConfig, target: int, layers: int, heads: float,
               mix: tuple[float, float]) -> Plan | None:
    base = Plan(layers=layers, heads=heads)
    if not ("hidden" in config.parts or "neurons" in config.parts):
        base.params = plan_params(model, config, base)
        return base if base.params <= target else None
    return _fit(model, config, base, target, mix)


def candidates(model: nn.Module, config: PruningConfig, target: int) -> list[Plan]:
    """The grid's architectures at or below ``target`` (see the module docstring), without duplicates."""
    out: list[Plan] = []
    for layers in _depths(model, config, target):
        for heads in _head_fractions(model, config):
            for mix in _mixes(config):
                plan = _candidate(model, config, target, layers, heads, mix)
                if plan is not None and all(_key(plan) != _key(c) for c in out):
                    out.append(plan)
    return out


def tolerance(model: nn.Module, config: PruningConfig, target: int) -> float:
    """How far below the target a candidate may land, as a fraction: 1%, or the parameters of one FFN width step
    when the widths' multiple makes that larger (an FFN-only candidate cannot land closer; without this the screen
    kept only the mixes that happened to, measured in docs/deployment.md)."""
    if "neurons" not in config.parts:
        return 0.01
    ucfg = unit_config(config, Plan(neurons=0.5, heads=config.sparsity_for("heads") if "heads" in config.parts
                                    else 0.0))
    group = next(g for g in find_groups(model, ucfg) if g.kind == "neurons")
    if group.multiple <= 1:
        return 0.01
    step = plan_params(model, config, Plan()) - plan_params(model, config,
                                                           Plan(neurons=group.multiple / group.num_units))
    return max(0.01, step / target)


def _neighbours(model: nn.Module, config: PruningConfig, target: int, best: Plan, seen: list[Plan],
                tol: float) -> list[Plan]:
    """The grid points next to ``best`` not yet re-scored after refit: one depth step either way, the next width
    mix either way (the candidate already in ``seen`` where it is one, a new one otherwise)."""
    depths = _depths(model, config, target)
    step = max(1, (depths[-1] - depths[0]) // (2 * _DEPTH_STEPS)) if len(depths) > 1 else 0
    mixes = _mixes(config)
    i = mixes.index(best.mix) if best.mix in mixes else None
    points = [(best.layers + d, best.mix) for d in (-step, step) if step and 0 <= best.layers + d <= depths[-1]]
    points += [(best.layers, mixes[j]) for j in ((i - 1, i + 1) if i is not None else ()) if 0 <= j < len(mixes)]
    out: list[Plan] = []
    for layers, mix in points:
        plan = _candidate(model, config, target, layers, best.heads, mix or (1.0, 1.0))
        if plan is None or plan.params < (1 - tol) * target:
            continue
        plan = next((c for c in seen if _key(c) == _key(plan)), plan)
        if plan.refit_loss is None and all(plan is not c for c in out):
            out.append(plan)
    return out


def check_target(model: nn.Module, config: PruningConfig, target: int) -> None:
    """Bad targets fail before any calibration: at or above the model's size, below what the parts that are not
    pruned (token embeddings, LM head) need, or beyond every candidate architecture."""
    total = stored_params(model)
    if target >= total:
        raise ConfigError(f"target_params={target:,} is not below the model's {total:,} parameters; nothing to "
                          "prune. Give a smaller target.")
    floor = sum(p.numel() for p in {id(p): p for m in model.modules() if isinstance(m, nn.Embedding)
                                    for p in m.parameters()}.values())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and all(head.weight is not m.weight for m in model.modules() if isinstance(m, nn.Embedding)):
        floor += head.weight.numel()
    if "hidden" not in config.parts and target < floor:
        raise ConfigError(f"target_params={target:,} is below the {floor:,} parameters of the embeddings (and LM "
                          f"head), which granularity {config.granularity!r} does not shrink; add 'hidden' or give a "
                          "larger target.")
    if not candidates(model, config, target):  # parameter counts of meta-device skeletons: shapes only
        raise _unreachable(config, target)


def _unreachable(config: PruningConfig, target: int) -> ConfigError:
    return ConfigError(f"No architecture of granularity {config.granularity!r} reaches "
                       f"width_depth.target_params={target:,} (widths up to {_MAX_WIDTH_FRACTION:.0%} removed); add "
                       "an axis or give a larger target.")


def _first(batches: list, samples: int) -> list:
    """The first batches holding at least ``samples`` sequences (all when fewer)."""
    out, seen = [], 0
    for b in batches:
        out.append(b)
        seen += len(b["input_ids"]) if isinstance(b, dict) and "input_ids" in b else len(b)
        if seen >= samples:
            break
    return out


def split_batches(batches: list) -> tuple[list, list]:
    """(batches the search refits on, held-out batches it scores on): the held-out ones are taken from the last
    quarter of the batches (at most `SEARCH_HELD_SAMPLES` sequences), the refit ones from the start (at most
    `SEARCH_FIT_SAMPLES`); one batch serves both (`choice_reason` then says the loss is in-sample)."""
    if len(batches) < 2:
        return batches, batches
    held = max(1, len(batches) // 4)
    return _first(batches[:-held], SEARCH_FIT_SAMPLES), _first(batches[-held:], SEARCH_HELD_SAMPLES)


def search_target(model: nn.Module, config: PruningConfig, target: int, scores: Scores, batches: list,
                  refit: bool = False) -> tuple[Plan, list[Plan]]:
    """(chosen plan, every candidate with its parameter count, screen loss and, for the re-scored ones, refit
    loss). ``refit``: re-score the best after reconstruction (`prune_to_plan`)."""
    found = candidates(model, config, target)
    if not found:
        raise _unreachable(config, target)
    tol = tolerance(model, config, target)
    close = [c for c in found if c.params >= (1 - tol) * target]
    if not close or not batches:
        return max(close or found, key=lambda c: c.params), found
    fit, held = split_batches(batches)

    def score(c: Plan, with_refit: bool) -> None:
        trial = copy.deepcopy(model)
        prune_to_plan(trial, config, c, scores, fit if with_refit else None)
        loss = lm_loss(trial, held)
        if with_refit:
            c.refit_loss = loss
        else:
            c.loss = loss
        del trial

    for c in close:
        score(c, False)
    if not refit or config.width_depth.search_refits == 0:
        return min(close, key=lambda c: (c.loss, -c.params)), found
    ranked = sorted(close, key=lambda c: c.loss)[: config.width_depth.search_refits]
    for c in ranked:
        score(c, True)
    best = min(ranked, key=lambda c: c.refit_loss)
    for c in _neighbours(model, config, target, best, found, tol):
        if c.loss is None:
            score(c, False)
            found.append(c)
        score(c, True)
    best = min((c for c in found if c.refit_loss is not None), key=lambda c: (c.refit_loss, -c.params))
    return best, found


def choice_reason(chosen: Plan, found: list[Plan], target: int, num_batches: int, tol: float = 0.01) -> str:
    """Why ``chosen`` won, in one sentence for the report (``num_batches``: the calibration batches the search
    had; with one, its losses are measured on the batch it refit on; ``tol``: the search's `tolerance`)."""
    refit = [c for c in found if c.refit_loss is not None]
    screened = [c for c in found if c.loss is not None]
    where = "held-out" if num_batches > 1 else "in-sample (one calibration batch)"
    if refit:
        return (f"lowest {where} calibration loss after reconstruction ({chosen.refit_loss:.4f}) among the "
                f"{len(refit)} candidates re-scored after reconstruction (the best of {len(screened)} screened "
                f"without refit, and the winner's grid neighbours); {len(found)} candidates in all")
    if screened:
        return (f"lowest {where} calibration loss ({chosen.loss:.4f}) among the {len(screened)} candidates within "
                f"{tol:.1%} of the target (no reconstruction); {len(found)} candidates in all")
    if (chosen.params or 0) >= (1 - tol) * target:
        return f"the largest of {len(found)} candidates (no calibration data to score them on)"
    return f"no candidate within {tol:.1%} below the target: the largest of {len(found)} candidates below it"
