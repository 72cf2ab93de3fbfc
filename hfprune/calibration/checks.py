"""One check of input data against the model, before any forward pass (calibration and evaluation alike).

A forward pass is the worst place to find out that token ids exceed the vocabulary or that images have the wrong
size: the error comes from deep inside attention, after minutes of work, and does not say what to change. Here
every batch is checked for its kind (token ids, pixels, embeddings), dtype, id range against the embedding, shape
against the config (channels, image size) and length against the position embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CalibrationError, ConfigError, EvaluationError

_POSITION_NAMES = ("position_embeddings", "wpe", "embed_positions")


def is_vision(model: nn.Module) -> bool:
    return getattr(model, "main_input_name", None) == "pixel_values"


def embedding_size(model: nn.Module) -> int | None:
    """Rows of the input embedding (the highest token id + 1 the model accepts), when it has one."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    if isinstance(emb, nn.Embedding):
        return emb.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None)


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence a model with learned position embeddings accepts (None for rotary / relative positions,
    which have no hard limit)."""
    limits = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_NAMES:
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0  # RoBERTa counts from pad+1
            limits.append(module.num_embeddings - offset)
    return min(limits) if limits else None


def resolved_seq_len(config: Any, model: nn.Module) -> int:
    """The calibration window: an explicit ``calibration.seq_len``, or for "auto" the model's positions capped at
    `CalibrationConfig.AUTO_SEQ_LEN` (a default adapts to the model instead of refusing it)."""
    seq_len = config.calibration.seq_len
    if seq_len != "auto":
        return seq_len
    cap = type(config.calibration).AUTO_SEQ_LEN
    return min(cap, max_positions(model) or cap)


def check_config_for_model(config: Any, model: nn.Module) -> None:
    """Config limits that depend on the model (an explicit ``seq_len`` against learned position embeddings), for
    the runs that build sequences of ``seq_len`` tokens (texts packed, random calibration); before any work."""
    limit = max_positions(model)
    seq_len = config.calibration.seq_len
    if limit is not None and not is_vision(model) and seq_len != "auto" and seq_len > limit:
        raise ConfigError(f"PruningConfig.calibration.seq_len={seq_len} is longer than the {limit} positions the "
                          f"model's position embeddings hold; set it to at most {limit}, or to 'auto'.")


def check_weights(model: nn.Module, what: str = "the model") -> None:
    """Every parameter is loaded (not on the meta device) and finite: a NaN model cannot be scored, trained or
    distilled from. ``what`` names the model in the message (e.g. "the teacher")."""
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ConfigError(f"Parameter {name} is on the 'meta' device (not loaded, or offloaded by accelerate's "
                              "device_map to 'cpu'/'disk'); scoring reads every weight. Load the model with its "
                              "weights on real devices (device_map over GPUs, or on CPU): see docs/scaling.md.")
        if not torch.isfinite(p).all():
            raise ConfigError(f"Parameter {name} of {what} holds NaN or inf; {what} is corrupt and cannot be "
                              "pruned, trained or distilled from. Load the original weights again.")


def check_units(config: Any, groups: list[Any]) -> None:
    """``round_to`` and ``min_units`` must fit in every group: otherwise nothing is pruned while the report would
    claim more kept units than the layer has."""
    for g in groups:
        for name in ("min_units", "round_to"):
            value = getattr(config, name)
            if value != "auto" and value > g.num_units:
                raise ConfigError(f"PruningConfig.{name}={value} is larger than {g.name}, which has {g.num_units} "
                                  f"{g.kind}; set {name} <= {g.num_units} (or leave that layer out with ignore).")


def _fail(message: str, evaluation: bool) -> Exception:
    return (EvaluationError if evaluation else CalibrationError)(message)


def check_token_ids(ids: Any, model: nn.Module, tokenizer: Any = None, evaluation: bool = False) -> None:
    """A ``[rows, tokens]`` integer tensor whose ids fit the embedding and whose length fits the positions."""
    what = _what(evaluation)
    if not isinstance(ids, torch.Tensor):
        raise _fail(f"The {what} input_ids are a {type(ids).__name__}, not a tensor; tokenize with "
                    "return_tensors='pt'.", evaluation)
    if is_vision(model):
        raise _fail(f"The {what} data holds token ids, but {type(model).__name__} takes images (pixel_values); "
                    "pass a float [images, channels, height, width] tensor.", evaluation)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise _fail(f"The {what} input_ids have dtype {ids.dtype}; token ids are integers (torch.long) from the "
                    "tokenizer. A float tensor for a text model is not token ids.", evaluation)
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise _fail(f"The {what} input_ids have shape {tuple(ids.shape)}; pass a non-empty [rows, tokens] "
                    "tensor.", evaluation)
    vocab = embedding_size(model)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        hint = ""
        if tokenizer is not None and vocab is not None and len(tokenizer) > vocab:
            hint = (f" The tokenizer has {len(tokenizer)} tokens, more than the model's embedding: use the tokenizer "
                    "saved with this model.")
        raise _fail(f"The {what} token ids range over [{low}, {high}], outside the model's embedding of {vocab} "
                    f"rows (ids 0..{(vocab or 0) - 1}).{hint or ' Use the tokenizer that belongs to the model.'}",
                    evaluation)
    limit = max_positions(model)
    if limit is not None and ids.shape[1] > limit:
        raise _fail(f"The {what} sequences have {ids.shape[1]} tokens, more than the {limit} positions of the "
                    f"model's position embeddings; lower seq_len (or max_length) to <= {limit}.", evaluation)


def check_pixels(x: Any, model: nn.Module, evaluation: bool = False) -> None:
    """A float ``[images, channels, height, width]`` tensor matching the config's channels and image size."""
    what = _what(evaluation)
    if not is_vision(model):
        raise _fail(f"The {what} data is a float tensor (images), but {type(model).__name__} takes token ids; "
                    "pass texts with a tokenizer or a [rows, tokens] tensor of token ids.", evaluation)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise _fail(f"The {what} pixel_values have dtype {getattr(x, 'dtype', type(x).__name__)}; images are "
                    "float tensors (normalised pixels).", evaluation)
    cfg = model.config
    channels = getattr(cfg, "num_channels", None)
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        raise _fail(f"The {what} images have shape {tuple(x.shape)}; {type(model).__name__} takes [images, "
                    f"{channels or 'channels'}, height, width].", evaluation)
    size = getattr(cfg, "image_size", None)
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[2:]) != hw:
            raise _fail(f"The {what} images are {x.shape[2]}x{x.shape[3]} pixels; the model takes {hw[0]}x{hw[1]} "
                        "(config.image_size): resize them with the model's image processor.", evaluation)
    _check_finite(x, f"{what} images", evaluation)


def _what(evaluation: bool) -> str:
    return "evaluation" if evaluation else "calibration"


def _check_finite(x: torch.Tensor, what: str, evaluation: bool) -> None:
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise _fail(f"The {what} hold NaN or inf values; clean the data before pruning.", evaluation)


def check_batch(batch: Any, model: nn.Module, tokenizer: Any = None, example_inputs: Any = None,
                evaluation: bool = False) -> None:
    """Check one model-ready batch (a dict of tensors for Hugging Face models, a tensor for plain modules)."""
    if isinstance(batch, torch.Tensor):
        if hasattr(model, "config"):
            raise _fail("A bare tensor batch reached a Hugging Face model; pass a dict of input tensors.",
                        evaluation)
        _check_plain(batch, example_inputs, evaluation)
        return
    if "input_ids" in batch:
        check_token_ids(batch["input_ids"], model, tokenizer, evaluation)
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape != batch["input_ids"].shape:
            ids = tuple(batch["input_ids"].shape)
            raise _fail(f"attention_mask has shape {tuple(mask.shape)} but input_ids {ids}; "
                        "tokenize them together (padding=True).", evaluation)
    elif "pixel_values" in batch:
        check_pixels(batch["pixel_values"], model, evaluation)
    elif "inputs_embeds" in batch:
        x = batch["inputs_embeds"]
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3 or (
                hidden is not None and x.shape[-1] != hidden):
            raise _fail(f"inputs_embeds must be a float [rows, tokens, {hidden}] tensor, got "
                        f"{tuple(getattr(x, 'shape', ()))}.", evaluation)
        _check_finite(x, "inputs_embeds", evaluation)
    else:  # other inputs (audio features, a plain module's own argument names): present and finite
        main = getattr(model, "main_input_name", None)
        if hasattr(model, "config") and main is not None and main not in batch:
            raise _fail(f"The batch has the keys {sorted(batch)}; {type(model).__name__} takes {main!r}.",
                        evaluation)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                _check_finite(value, f"{_what(evaluation)} {key}", evaluation)


def _check_plain(x: torch.Tensor, example_inputs: Any, evaluation: bool) -> None:
    """Plain torch modules: the sample shape must match ``example_inputs`` (when given) and values be finite."""
    if x.dim() == 0 or x.shape[0] == 0:
        raise _fail(f"The data tensor has shape {tuple(x.shape)}; pass [samples, ...].", evaluation)
    if isinstance(example_inputs, torch.Tensor) and tuple(x.shape[1:]) != tuple(example_inputs.shape[1:]):
        raise _fail(f"The data samples have shape {tuple(x.shape[1:])}, example_inputs "
                    f"{tuple(example_inputs.shape[1:])}; pass data shaped like the model's input.", evaluation)
    _check_finite(x, "data", evaluation)


def check_batches(batches: list[Any], model: nn.Module, tokenizer: Any = None, example_inputs: Any = None,
                  evaluation: bool = False) -> None:
    for b in batches:
        check_batch(b, model, tokenizer, example_inputs, evaluation)

