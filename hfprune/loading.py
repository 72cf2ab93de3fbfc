"""`load_pruned`: load any checkpoint hfprune saved, including widths the family's config cannot express.

Plain ``from_pretrained`` works whenever ``pruning_config.json`` says ``"loader": "transformers"``. Otherwise the
model is built from its config, every parameter is resized to the shape stored in the safetensors file, head
counts are recomputed from the new shapes, and the weights are loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import transformers
from safetensors import safe_open
from torch import nn

from .config import read_pruning_file
from .errors import CheckpointError
from .structure import adapter_for
from .structure.layers import Conv1D


def _read_state(path: str) -> dict[str, torch.Tensor]:
    index = os.path.join(path, "model.safetensors.index.json")
    files = [os.path.join(path, "model.safetensors")]
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not os.path.isfile(file):
            raise CheckpointError(f"{file} is missing; the checkpoint folder is incomplete. Save it again.")
        with safe_open(file, framework="pt") as f:
            for k in f.keys():
                state[k] = f.get_tensor(k)
    return state


def _resize(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Give ``module.<name>`` the stored shape and update the module's size attributes to match."""
    current = getattr(module, name, None)
    empty = torch.empty(tensor.shape, dtype=tensor.dtype)
    if isinstance(current, nn.Parameter) or current is None:
        setattr(module, name, nn.Parameter(empty))
    else:
        module.register_buffer(name, empty)
    if name != "weight":
        return
    w = module.weight
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif Conv1D and isinstance(module, Conv1D):
        module.nf = w.shape[1]
    elif isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = w.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(w.shape)


def load_pruned(path: str | os.PathLike, auto_class: str | None = None, **kwargs: Any) -> nn.Module:
    """Load a folder (or Hub repo id) written by `PruningResult.save_pretrained` / `hfprune prune`, whatever its
    widths.

    ``auto_class`` overrides the recorded transformers Auto class name (e.g. ``"AutoModelForCausalLM"``);
    ``kwargs`` go to ``from_pretrained`` / ``from_config`` (e.g. ``dtype``).
    """
    path = os.fspath(path)
    if not os.path.isdir(path) and path.count("/") == 1:  # a Hub repo id: fetch the snapshot first
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, revision=kwargs.pop("revision", None), token=kwargs.pop("token", None))
    info = read_pruning_file(path)
    cls = getattr(transformers, auto_class or info.get("auto_class") or "AutoModel", None)
    if cls is None:
        raise CheckpointError(f"Unknown transformers class {auto_class or info.get('auto_class')!r}.")
    if info.get("loader") == "transformers":
        return cls.from_pretrained(path, **kwargs)
    config = transformers.AutoConfig.from_pretrained(path)
    model = cls.from_config(config, **kwargs)
    state = _read_state(path)
    own = model.state_dict()
    for key, tensor in state.items():
        module_name, _, attr = key.rpartition(".")
        if key not in own or own[key].shape != tensor.shape:
            _resize(model.get_submodule(module_name), attr, tensor)
    adapter = adapter_for(model)
    if adapter is not None:
        adapter.fix_attention(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not any(m.endswith(t) for t in tied)]
    if unexpected or missing:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}. Save the pruned model again.")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
