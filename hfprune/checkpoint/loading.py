"""`load_pruned`: load any checkpoint hfprune saved, including widths the family's config cannot express.

Plain ``from_pretrained`` works whenever ``pruning_config.json`` says ``"loader": "transformers"``. Otherwise the
model is built from its config, every parameter is resized to the shape stored in the safetensors file, head
counts are recomputed from the new shapes, and the weights are loaded.

Before anything is loaded, `check_checkpoint` checks the folder as a whole: the files are there, the JSON files
parse, the weights' headers are readable and their shapes agree with ``config.json`` and ``pruning_config.json``.
Every failure is a `CheckpointError` naming the file and the fix. Pickled weights (``pytorch_model.bin``) can run
code when loaded, so they are refused unless ``allow_pickle=True`` (``--allow-pickle``), and then read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from safetensors import safe_open
from torch import nn

from ..config.pruning_config import PruningConfig, read_pruning_file
from ..errors import CheckpointError, ConfigError, PruningError, reason, shorten, shown
from ..structure import adapter_for, find_groups
from ..structure.layers import Conv1D
from ..structure.loaders import Loader

SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE_WEIGHTS, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


@dataclass
class CheckedCheckpoint:
    """What `check_checkpoint` found: the folder, its ``pruning_config.json``, the model config and class, and
    the weight files with their stored shapes."""

    path: str
    info: dict[str, Any]
    config: Any
    model_class: Any
    files: list[str]
    pickled: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_checkpoint(path: str | os.PathLike, revision: str | None = None, token: str | None = None) -> str:
    """A local folder as given, or the snapshot of a Hub repo id (``namespace/name``); a missing local folder is
    reported as missing, never sent to the Hub."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise CheckpointError(f"Checkpoint path {shown(path)} is empty; pass the folder a pruned model was saved to.")
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path} is a file; pass the folder that holds it (with config.json and "
                              "pruning_config.json).")
    if _looks_like_path(path) or path.count("/") != 1:
        raise CheckpointError(f"Checkpoint folder {path} does not exist; pass the folder that "
                              "`PruningResult.save_pretrained` or `hfprune prune --output` wrote (or a Hub id "
                              "'namespace/name').")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, revision=revision, token=token)
    except Exception as e:  # offline, unknown repo, auth: huggingface_hub raises many types
        from ..utils.redact import scrub

        raise CheckpointError(scrub(f"{path} is not a local folder, and downloading it from the Hub failed "
                                    f"({type(e).__name__}: {reason(e)}). "
                                    "Check the folder path, or the repo id, network and token.", token)) from None


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {what}. Save the pruned model again.") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is not valid JSON ({shorten(str(e))}): {what}. Save the pruned model "
                              "again.") from None


def _model_class(info: dict[str, Any], auto_class: str | None) -> Any:
    name = auto_class or info.get("auto_class") or "AutoModel"
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    is_model = isinstance(cls, type) and (name.startswith("AutoModel")
                                          or issubclass(cls, transformers.PreTrainedModel))
    if not is_model or not hasattr(cls, "from_config"):
        source = "the argument" if auto_class else "pruning_config.json"
        raise CheckpointError(f"auto_class {shown(name)} (from {source}) is not a transformers model class; use "
                              "one such as 'AutoModelForCausalLM', 'AutoModelForSequenceClassification' or "
                              "'AutoModel'.")
    return cls


def _weight_files(path: str, allow_pickle: bool) -> tuple[list[str], bool]:
    """The weight files to read and whether they are pickles."""
    for weights, index, pickled in ((SAFE_WEIGHTS, SAFE_INDEX, False), (PICKLE_WEIGHTS, PICKLE_INDEX, True)):
        index_path = os.path.join(path, index)
        if os.path.isfile(index_path):
            data = _read_json(index_path, "the index of the sharded weights")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path} has no 'weight_map'; save the pruned model again.")
            files = sorted({os.path.join(path, str(v)) for v in weight_map.values()})
        elif os.path.isfile(os.path.join(path, weights)):
            files = [os.path.join(path, weights)]
        else:
            continue
        for file in files:
            if not os.path.isfile(file):
                raise CheckpointError(f"{file} is missing; the checkpoint folder is incomplete. Save it again.")
        if pickled and not allow_pickle:
            raise CheckpointError(f"{path} holds only pickled weights ({os.path.basename(files[0])}), which can run "
                                  "code when loaded. If you trust the folder, pass allow_pickle=True (--allow-pickle "
                                  "on the command line): they are then read with torch.load(weights_only=True). "
                                  "Better: save it again with safetensors.")
        return files, pickled
    raise CheckpointError(f"{path} has no weights ({SAFE_WEIGHTS} or {SAFE_INDEX}); save the pruned model again.")


def _stored_shapes(files: list[str], pickled: bool) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers (no data read); pickles are only read when loading."""
    if pickled:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for k in f.keys():
                    shapes[k] = tuple(f.get_slice(k).get_shape())
        except Exception as e:  # safetensors raises SafetensorError (not an OSError) for a truncated header
            raise CheckpointError(f"{file} is truncated or corrupt ({shorten(str(e))}); download or save the "
                                  "checkpoint again.") from None
    return shapes


def check_model_folder(path: str, allow_pickle: bool = False) -> tuple[Any, list[str], bool,
                                                                       dict[str, tuple[int, ...]]]:
    """Check any model folder (pruned or not): ``config.json`` parses and names a model type, the weights are
    present and safetensors (or pickles, with ``allow_pickle``), and their headers are readable. Returns the
    transformers config, the weight files, whether they are pickles, and the stored shapes."""
    raw = _read_json(os.path.join(path, "config.json"), "every model folder needs the model's config.json")
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise CheckpointError(f"{os.path.join(path, 'config.json')} has no 'model_type'; it is not a transformers "
                              "config. Save the model again with save_pretrained.")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{os.path.join(path, 'config.json')} cannot be read by transformers "
                              f"({reason(e)}); check its "
                              "model_type, or upgrade transformers.") from None
    files, pickled = _weight_files(path, allow_pickle)
    return config, files, pickled, _stored_shapes(files, pickled)


def check_checkpoint(path: str | os.PathLike, auto_class: str | None = None,
                     allow_pickle: bool = False) -> CheckedCheckpoint:
    """Check a local checkpoint folder before loading anything (see the module docstring)."""
    path = os.fspath(path)
    info = read_pruning_file(path)
    try:
        PruningConfig.from_dict(info["pruning_config"])
    except ConfigError as e:
        raise CheckpointError(f"{os.path.join(path, 'pruning_config.json')} holds an invalid pruning config ({e}); "
                              "save the pruned model again.") from None
    if info.get("loader") == Loader.STATE_DICT:
        raise CheckpointError(f"{path} holds the state dict of a plain torch module ({shown(info.get('example'))}), "
                              "not a transformers model: build the module and load model.safetensors into it with "
                              "safetensors.torch.load_file.")
    config, files, pickled, shapes = check_model_folder(path, allow_pickle)
    checked = CheckedCheckpoint(path, info, config, _model_class(info, auto_class), files, pickled, shapes)
    if info.get("loader") == Loader.TRANSFORMERS and checked.shapes:
        _check_shapes_match_config(checked)
    return checked


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key


def _check_shapes_match_config(checked: CheckedCheckpoint) -> None:
    """A "transformers" checkpoint must have exactly the shapes its config.json implies (built on the meta device,
    no memory): otherwise from_pretrained would re-initialise or refuse weights."""
    with torch.device("meta"):
        model = checked.model_class.from_config(checked.config)
    prefix = getattr(model, "base_model_prefix", "")
    expected = {_strip(k, prefix): tuple(v.shape) for k, v in model.state_dict().items()}
    stored = {_strip(k, prefix): v for k, v in checked.shapes.items()}
    for key, shape in stored.items():
        if key in expected and expected[key] != shape:
            raise CheckpointError(f"{checked.path}: weight {key} has shape {list(shape)} but config.json implies "
                                  f"{list(expected[key])}; config.json or pruning_config.json (loader "
                                  "'transformers') was edited or belongs to another model. Save the pruned model "
                                  "again.")
    tied = _tied(model)
    missing = [k for k in expected if k not in stored and not any(k == _strip(t, prefix) for t in tied)]
    if missing and len(missing) == len(expected):
        raise CheckpointError(f"{checked.path}: none of the stored weights belong to {type(model).__name__}; "
                              f"auto_class or config.json does not match the weights (first missing: {missing[0]}).")
    if missing:
        raise CheckpointError(f"{checked.path}: weights missing from the safetensors files: {missing[:5]}; the "
                              "checkpoint is incomplete. Save the pruned model again.")


def _tied(model: nn.Module) -> set[str]:
    return set(getattr(model, "_tied_weights_keys", None) or [])


def _read_state(checked: CheckedCheckpoint) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in checked.files:
        try:
            if checked.pickled:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
            else:
                with safe_open(file, framework="pt") as f:
                    for k in f.keys():
                        state[k] = f.get_tensor(k)
        except Exception as e:  # a truncated tensor body, or a pickle that is not a plain state dict
            raise CheckpointError(f"{file} cannot be read ({type(e).__name__}: {shorten(str(e))}); download or "
                                  "save the checkpoint again.") from None
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


def _check_groups(model: nn.Module, checked: CheckedCheckpoint) -> None:
    """The kept unit counts recorded in ``pruning_config.json`` must be the counts the weights hold."""
    recorded = checked.info.get("groups") or {}
    config = PruningConfig.from_dict(checked.info["pruning_config"])
    masked_only = checked.info.get("compacted") is False  # PruningTrainer(keep_masks=True): zeros, same widths
    if not isinstance(recorded, dict) or not recorded or masked_only or not config.structured or \
            "channels" in config.parts:
        return
    try:
        found = {g.name: g.num_units for g in find_groups(model, config)}
    except PruningError:  # a structure this version cannot read (e.g. a family since removed): nothing to compare
        return
    for name, entry in recorded.items():  # names the structure does not know are not compared
        kept = entry.get("kept") if isinstance(entry, dict) else None
        if name in found and found[name] != kept:
            raise CheckpointError(f"{os.path.join(checked.path, 'pruning_config.json')} records {name} keeping "
                                  f"{shown(kept)} {entry.get('kind', 'units') if isinstance(entry, dict) else 'units'}"
                                  f", but the weights hold {found[name]}: the file was edited or "
                                  "belongs to another checkpoint. Save the pruned model again.")


def load_pruned(path: str | os.PathLike, auto_class: str | None = None, allow_pickle: bool = False,
                **kwargs: Any) -> nn.Module:
    """Load a folder (or Hub repo id) written by `PruningResult.save_pretrained` / `hfprune prune`, whatever its
    widths, after `check_checkpoint`.

    ``auto_class`` overrides the recorded transformers Auto class name (e.g. ``"AutoModelForCausalLM"``);
    ``allow_pickle`` accepts ``pytorch_model.bin`` weights (read with ``weights_only=True``); ``kwargs`` go to
    ``from_pretrained`` / ``from_config`` (e.g. ``dtype``), except ``revision`` and ``token`` (for a Hub id).
    """
    path = resolve_checkpoint(path, kwargs.pop("revision", None), kwargs.pop("token", None))
    checked = check_checkpoint(path, auto_class, allow_pickle)
    cls = checked.model_class
    if checked.info.get("loader") == Loader.TRANSFORMERS:
        model = cls.from_pretrained(path, use_safetensors=not checked.pickled, **kwargs)
    else:
        model = _load_resized(checked, **kwargs)
    _check_groups(model, checked)
    return model.eval()


def _load_resized(checked: CheckedCheckpoint, **kwargs: Any) -> nn.Module:
    model = checked.model_class.from_config(checked.config, **kwargs)
    state = _read_state(checked)
    own = model.state_dict()
    for key, tensor in state.items():
        module_name, _, attr = key.rpartition(".")
        if key not in own or own[key].shape != tensor.shape:
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise CheckpointError(f"{checked.path}: the weights hold {key}, which {type(model).__name__} does "
                                      "not have; auto_class or config.json does not match the weights.") from None
            _resize(module, attr, tensor)
    adapter = adapter_for(model)
    if adapter is not None:
        adapter.fix_attention(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied(model)
    missing = [m for m in missing if m not in tied and not any(m.endswith(t) for t in tied)]
    if unexpected or missing:
        raise CheckpointError(f"{checked.path} does not match its config: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}. Save the pruned model again.")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model
