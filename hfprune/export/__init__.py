"""Export a pruned folder into what other tools load: a non-uniform folder (per-layer widths, ``loader: hfprune``)
as ``padded`` (plain transformers) or ``nemotron-nas`` (serving engines), which uniform folders do not need; any
causal-LM folder quantized (``quanto-int4`` / ``quanto-int8``, weight-only, optimum-quanto)."""

from __future__ import annotations

import json
import os
from typing import Literal

import transformers

from ..checkpoint.io import atomic_output_dir
from ..checkpoint.loading import check_checkpoint, load_pruned, resolve_checkpoint
from ..config.pruning_config import PruningConfig
from ..errors import ConfigError, shown
from ..report.measure import count_params
from ..structure import find_groups
from ..structure.loaders import Loader
from ..utils.logging import get_logger
from .nemotron_nas import to_nemotron_nas
from .padded import pad_to_widest
from .quantize import quantize_weights, require_quanto

ExportFormat = Literal["padded", "nemotron-nas", "quanto-int4", "quanto-int8"]
FORMATS: tuple[str, ...] = ("padded", "nemotron-nas", "quanto-int4", "quanto-int8")
#: formats that change the layout of non-uniform models (uniform ones need none)
LAYOUTS = ("padded", "nemotron-nas")
EXPORT_NAME = "hfprune_export.json"

logger = get_logger(__name__)

_CARD = """---
library_name: transformers
tags: [hfprune, pruned, {format}]
---
# {name} ({format} export)

`{source}` exported by `hfprune export --format {format}`. {what}

| | parameters |
|---|---|
| pruned model (`{source}`) | {pruned:,} |
| this export | {exported:,} |

Widths per layer before the export and the layout written are in `{export_name}`; how the model was pruned is in
`source_pruning_report.json`.
"""

_WHAT = {
    "padded": "Every layer is zero-padded to the widest layer's width, so plain `from_pretrained` loads it (no "
              "hfprune, no remote code) and gives the pruned model's outputs. It brings no size or speed win past "
              "the widest layer.",
    "nemotron-nas": "The DeciLM / Nemotron-NAS `block_configs` layout (per-block KV groups and FFN widths) that "
                    "vLLM (`nemotron_nas`), llama.cpp (`deci`), TensorRT-LLM, SGLang and mlx-lm read; FFN widths "
                    "are zero-padded to the multiples of 256 those readers compute. transformers has no built-in "
                    "class for it (readers outside transformers; see docs/deployment.md).",
    "quanto-int4": "Weights of every linear layer but the LM head quantized to 4 bits (optimum-quanto, asymmetric "
                   "min/max scales per group of 128 input features where the width allows). Load it with "
                   "`optimum.quanto.QuantizedModelForCausalLM.from_pretrained`.",
    "quanto-int8": "Weights of every linear layer but the LM head quantized to 8 bits (optimum-quanto). Load it "
                   "with `optimum.quanto.QuantizedModelForCausalLM.from_pretrained`.",
}


def export(src: str | os.PathLike, out: str | os.PathLike, format: ExportFormat = "padded",
           overwrite: bool = False) -> str:
    """Write ``src`` (a folder `hfprune.load_pruned` reads) to ``out`` in ``format``; returns ``out``.

    Refuses, before loading anything: an unknown format, a folder whose widths are already uniform for a layout
    format (it loads with plain ``from_pretrained``: serve it as it is), per-layer widths for quanto, a missing
    optimum-quanto; and what the format cannot express (it says which format can).
    """
    if format not in FORMATS:
        raise ConfigError(f"export format {shown(format)} is not one of {', '.join(FORMATS)}.")
    path = resolve_checkpoint(src)
    checked = check_checkpoint(path)
    per_layer = checked.info.get("loader") == Loader.HFPRUNE
    if format in LAYOUTS and not per_layer:
        raise ConfigError(f"{path} has uniform widths (loader {checked.info.get('loader')!r}): plain "
                          "from_pretrained already loads it and serving engines read it as it is; nothing to "
                          "export.")
    if format not in LAYOUTS:
        if per_layer:
            raise ConfigError(f"{path} has per-layer widths, which quanto's loader cannot rebuild; export it with "
                              "format='padded' first, then quantize that folder.")
        require_quanto()
    model = load_pruned(path)
    pruned = count_params(model)[0]
    widths, layout, quantized = None, None, None
    if format == "padded":
        config = PruningConfig.from_dict(checked.info["pruning_config"])
        units = "+".join(p for p in config.parts if p in ("neurons", "heads"))
        groups = find_groups(model, PruningConfig.from_dict({**config.to_dict(), "granularity": units})) \
            if units else []
        widths = pad_to_widest(model, groups)
    elif format == "nemotron-nas":
        layout = to_nemotron_nas(model)
    else:
        model, quantized = quantize_weights(model, 4 if format == "quanto-int4" else 8)
    exported = count_params(model)[0] if quantized is None else pruned
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None
        logger.warning("%s has no readable tokenizer; the export holds the model only.", path)
    with atomic_output_dir(out, overwrite) as tmp:
        if quantized is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp)  # quanto's own writer: safetensors and its quantization map
        if layout is not None:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(layout, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, EXPORT_NAME), "w") as f:
            json.dump({"source": os.fspath(src), "format": format, "params_pruned": pruned,
                       "params_exported": exported, "widths": widths, "quantization": quantized}, f, indent=2)
        report = os.path.join(path, "pruning_report.json")
        if os.path.isfile(report):
            with open(report) as f, open(os.path.join(tmp, "source_pruning_report.json"), "w") as g:
                g.write(f.read())
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(_CARD.format(name=os.path.basename(os.path.normpath(os.fspath(out))), format=format,
                                 source=os.fspath(src), what=_WHAT[format], pruned=pruned, exported=exported,
                                 export_name=EXPORT_NAME))
    return os.fspath(out)


__all__ = ["export", "ExportFormat", "FORMATS"]
