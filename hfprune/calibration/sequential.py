"""Layer-by-layer (sequential) calibration: only one transformer block's inputs and statistics are held at a time.

The model's front (embeddings, rotary tables, attention-mask preparation) runs once per batch, stopped by a
forward pre-hook on the first block that records the block's arguments and raises `_Stop`. Then, block by block:
hooks go on the block's observed layers, the block runs on the cached inputs of every batch (this process's share
under torch.distributed), the block's output replaces its input in the cache (the next block's input, from the
*unpruned* block), and the block's statistics, summed across processes, are handed to the caller, which scores and
selects that block's units and lets the statistics go. Memory beyond the weights: one hidden-state cache
(samples x seq_len x hidden), one block's activations for one batch, and one block's statistics.

Forward-only criteria see exactly the inputs they see in a whole-model pass, so the masks are the same as with
``calibration.mode='full'``. Criteria needing network or loss gradients cannot run this way (the config rejects
them). Blocks after the last one with an observed layer are never run; the model's head never runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ctypes
import sys

import torch
from torch import nn
from tqdm.auto import tqdm

from ..criteria import Criterion, Stats
from ..utils.distributed import my_share
from ..errors import CalibrationError, ConfigError
from ..utils.logging import show_progress
from ..structure import Layer, adapter_for
from .collector import all_reduce_stats, forward_stats_hook
from .forward import no_kv_cache, run_model
from .offload import Offload, residency, to_device


class _Stop(Exception):
    """Raised by the first block's pre-hook: its inputs are captured, the rest of the model need not run."""


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the resident set creeps up block after
    block by what one block's temporaries left fragmented)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl)
            pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks: the family adapter's ``blocks`` ModuleList, else the ModuleList of
    same-type modules holding the most parameters."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
             and len({type(c) for c in m}) == 1]
    adapter = adapter_for(model)
    if adapter is not None and adapter.blocks:
        named = [(n, m) for n, m in lists if n == adapter.blocks or n.endswith("." + adapter.blocks)]
        lists = named or lists
    if not lists:
        raise ConfigError(f"calibration.mode='sequential' needs a model built from a list of blocks (an "
                          f"nn.ModuleList of transformer layers); {type(model).__name__} has none. Use "
                          "calibration.mode='full'.")
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def has_blocks(model: nn.Module) -> bool:
    """Whether `find_blocks` finds a list of callable blocks (block-by-block calibration and reconstruction can run;
    a ModuleList of plain containers whose children the model calls itself does not count)."""
    try:
        _, blocks = find_blocks(model)
    except ConfigError:
        return False
    return type(blocks[0]).forward is not nn.Module.forward


def block_of(names: list[str], prefix: str, num_blocks: int) -> dict[str, int | None]:
    """Index of the block each module name lies in (None: outside every block)."""
    out: dict[str, int | None] = {}
    for name in names:
        head = f"{prefix}." if prefix else ""
        rest = name[len(head):] if name.startswith(head) else ""
        idx = rest.split(".", 1)[0]
        out[name] = int(idx) if idx.isdigit() and int(idx) < num_blocks else None
    return out


def _no_cache(v: Any) -> Any:
    """Drop KV-cache objects from the captured block arguments (a positional ``past_key_values`` in GPT-2)."""
    return None if type(v).__name__.endswith("Cache") else v


def _share(new: Any, old: Any) -> Any:
    """``old`` when it equals ``new`` (masks, position tables are usually the same for every batch), so the
    cached arguments cost one batch's worth however many batches there are."""
    if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor):
        return old if new.shape == old.shape and new.dtype == old.dtype and torch.equal(new, old) else new
    if isinstance(new, tuple) and isinstance(old, tuple) and len(new) == len(old):
        shared = tuple(_share(a, b) for a, b in zip(new, old))
        return old if all(a is b for a, b in zip(shared, old)) else shared
    return new


def capture_block_inputs(model: nn.Module, first: nn.Module, batches: list[Any]) -> list[list[Any]]:
    """Run the model's front on every batch up to ``first``; one ``[hidden, args, kwargs]`` per batch."""
    seen: list[tuple[tuple, dict]] = []

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(pre, with_kwargs=True)
    cached: list[list[Any]] = []
    try:
        with torch.no_grad(), no_kv_cache(model):
            for batch in batches:
                try:
                    run_model(model, batch)
                except _Stop:
                    pass
                if not seen:
                    raise CalibrationError("Sequential calibration: the model ran without calling its first "
                                           "block; use calibration.mode='full'.")
                args, kwargs = seen.pop()
                hidden = args[0] if args else kwargs.pop("hidden_states")
                args = tuple(_no_cache(a) for a in args[1:])
                kwargs = {k: False if k == "use_cache" else _no_cache(v) for k, v in kwargs.items()}
                if cached:
                    prev = cached[-1]
                    args = tuple(_share(a, b) for a, b in zip(args, prev[1])) if len(args) == len(prev[1]) else args
                    kwargs = {k: _share(v, prev[2].get(k)) for k, v in kwargs.items()}
                cached.append([hidden, args, kwargs])
    finally:
        handle.remove()
    return cached


def block_statistics(model: nn.Module, criterion: Criterion, layers: dict[str, Layer], observed: list[str],
                     batches: list[Any], progress: bool = True,
                     offload: Offload = Offload()) -> Iterator[tuple[int, dict[str, Stats]]]:
    """Yield ``(block index, statistics of the observed layers in that block)`` block by block, in order, summed
    across processes; every block up to the last with an observed layer is yielded (with ``{}`` when it has
    none). Observed layers outside the blocks are an error (name them in ``ignore``, or use full mode). With an
    active ``offload`` the yielded block sits on the execution device until the caller asks for the next one."""
    if criterion.grad_mode is not None:  # the config rejects this; a criterion built by hand may not
        raise ConfigError(f"criterion {criterion.name!r} needs gradients; layer-by-layer calibration is forward "
                          "only. Use calibration.mode='full'.")
    prefix, blocks = find_blocks(model)
    where = block_of(observed, prefix, len(blocks))
    outside = sorted(n for n, i in where.items() if i is None)
    if outside:
        raise ConfigError(f"calibration.mode='sequential' calibrates layers inside the transformer blocks "
                          f"({prefix}.N); {outside} lie outside. Add them to `ignore`, or use "
                          "calibration.mode='full'.")
    last = max(where.values(), default=-1)
    was_training = model.training
    model.eval()  # before the capture: dropout in the embeddings would change the cached inputs
    try:
        with residency(blocks, offload) as resident:
            cache = capture_block_inputs(model, blocks[0], my_share(batches)) if last >= 0 else []
            if resident is not None:
                cache = to_device(cache, resident.device)
            release_memory()
            for i in tqdm(range(last + 1), desc=f"calibrating ({criterion.name}), block by block",
                          disable=not show_progress(progress), leave=False):
                if resident is not None:
                    resident.onload(i)
                yield i, _block_pass(blocks[i], cache, criterion, layers, [n for n in observed if where[n] == i])
                if resident is not None:
                    resident.offload(i, changed=False)
                release_memory()
    finally:
        model.train(was_training)


def _block_pass(block: nn.Module, cache: list[list[Any]], criterion: Criterion, layers: dict[str, Layer],
                names: list[str]) -> dict[str, Stats]:
    """Run ``block`` on every cached input (its output replaces the input: the next block's input) with the
    statistics hooks of ``names``; the statistics, summed across processes."""
    stats = {n: criterion.init_stats(layers[n]) for n in names}
    handles = [layers[n].module.register_forward_hook(forward_stats_hook(criterion, layers[n], stats[n]))
               for n in names]
    try:
        with torch.no_grad():
            for entry in cache:
                hidden, args, kwargs = entry
                out = block(hidden, *args, **kwargs)
                out = out[0] if isinstance(out, (tuple, list)) else out
                if out.shape == hidden.shape and out.dtype == hidden.dtype:
                    hidden.copy_(out)  # in place: the cache never grows nor fragments the heap
                else:
                    entry[0] = out
                del hidden, out
    finally:
        for h in handles:
            h.remove()
    all_reduce_stats(stats)
    return stats
