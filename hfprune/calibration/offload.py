"""Offloaded block-by-block passes: the transformer blocks' weights wait in CPU memory or on disk while one block at
a time is moved to the execution device for its statistics, scores and refit (as llm-compressor's sequential
pipeline does), so that device holds one block, that block's statistics and the hidden-state cache (samples x
seq_len x hidden), not the model.

- ``"cpu"``: the model stays in CPU memory; `BlockOffload.onload` moves a block to the execution device and
  `BlockOffload.offload` moves it back.
- ``"disk"``: on entering a pass every block's tensors are written in Accelerate's offload format (one
  memory-mapped file per tensor and an index, `accelerate.utils.offload_weight`) and replaced by meta tensors; a
  block is read back for its turn and written again when the pass changed it. On leaving the pass the blocks are
  read back into CPU memory (what follows — compaction, the report's probe, saving — needs the whole model), and
  the folder is removed. Each pass (statistics, reconstruction) is one context, so the model is whole between them.

Outside the blocks (embeddings, the final norm, the head) nothing moves: the model's front runs on the CPU once per
batch to capture the first block's inputs, which then go to the execution device (`to_device`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate.utils import load_offloaded_weight, offload_weight, set_module_tensor_to_device
from torch import nn

from ..errors import ConfigError

OffloadMode = Literal["none", "cpu", "disk"]


@dataclass(frozen=True)
class Offload:
    """Where the blocks wait (``mode``) and where each one runs (``device``)."""

    mode: OffloadMode = "none"
    device: str | None = None

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def execution_device(self) -> torch.device:
        """The configured device, else CUDA when available, else the CPU."""
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_of(config: Any) -> Offload:
    """The offload a `PruningConfig` asks for (``calibration.offload`` and ``calibration.device``)."""
    return Offload(config.calibration.offload, config.calibration.device)


def check_offload(model: nn.Module, offload: Offload) -> None:
    """Before any work: the model is in CPU memory (the offload's home) and the execution device exists."""
    if not offload.active:
        return
    away = sorted({str(p.device) for p in model.parameters() if p.device.type != "cpu"})
    if away:
        raise ConfigError(f"calibration.offload={offload.mode!r} keeps the model in CPU memory and moves one block "
                          f"at a time to calibration.device, but the model has weights on {', '.join(away)}. Load it "
                          "on the CPU (no device_map), or set calibration.offload='none'.")
    device = offload.execution_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"calibration.device={offload.device!r}: CUDA is not available on this machine; set "
                          "calibration.device='cpu' or leave it unset.")


def to_device(obj: Any, device: torch.device, memo: dict[int, Any] | None = None) -> Any:
    """``obj`` (tensors in lists, tuples and dicts) on ``device``; a tensor shared by several entries (the causal
    mask, the rotary tables of every batch) stays shared."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.to(device)
        return memo[id(obj)]
    if isinstance(obj, list):
        return [to_device(v, device, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device, memo) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, memo) for k, v in obj.items()}
    return obj


def _tensors(block: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*block.named_parameters(), *block.named_buffers()]


class BlockOffload:
    """One pass's residency of ``blocks`` (a context manager): only the block between `onload` and `offload` is on
    the execution device (and, with ``"disk"``, in memory at all)."""

    def __init__(self, blocks: nn.ModuleList, offload: Offload) -> None:
        self.blocks, self.mode = blocks, offload.mode
        self.device = offload.execution_device()
        self.folder: str | None = None
        self.index: dict[int, dict[str, dict[str, Any]]] = {}

    def __enter__(self) -> "BlockOffload":
        if self.mode == "disk":
            self.folder = tempfile.mkdtemp(prefix="hfprune-offload-")
            for i in range(len(self.blocks)):
                self._write(i)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for i, block in enumerate(self.blocks):
                if self.mode == "disk" and i in self.index:
                    self._read(i, torch.device("cpu"))
                elif self.mode == "cpu":
                    block.to("cpu")
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None

    def onload(self, i: int) -> None:
        """Block ``i`` on the execution device, ready to run."""
        if self.mode == "disk":
            self._read(i, self.device)
        else:
            self.blocks[i].to(self.device)

    def offload(self, i: int, changed: bool = True) -> None:
        """Block ``i`` back to its waiting place (written again to disk only when ``changed``)."""
        if self.mode == "disk":
            if changed:
                self._write(i)
            else:
                self._drop(i)
        else:
            self.blocks[i].to("cpu")

    def _write(self, i: int) -> None:
        folder = os.path.join(self.folder, str(i))
        os.makedirs(folder, exist_ok=True)
        index: dict[str, dict[str, Any]] = {}
        for name, t in _tensors(self.blocks[i]):
            offload_weight(t.detach(), name, folder, index=index)
        self.index[i] = index
        self._drop(i)

    def _drop(self, i: int) -> None:
        for name, _ in _tensors(self.blocks[i]):
            set_module_tensor_to_device(self.blocks[i], name, "meta")

    def _read(self, i: int, device: torch.device) -> None:
        folder = os.path.join(self.folder, str(i))
        for name, info in self.index[i].items():
            value = load_offloaded_weight(os.path.join(folder, f"{name}.dat"), info)
            set_module_tensor_to_device(self.blocks[i], name, device, value=value)
        for name, t in _tensors(self.blocks[i]):  # created while the block waited: the zero biases `add_bias`
            if t.device.type == "meta":  # gives every layer a config flag governs
                set_module_tensor_to_device(self.blocks[i], name, device, value=torch.zeros(t.shape, dtype=t.dtype))


def residency(blocks: nn.ModuleList, offload: Offload) -> Any:
    """A pass's `BlockOffload` context, or a null context (giving None) when nothing is offloaded."""
    return BlockOffload(blocks, offload) if offload.active else contextlib.nullcontext()
