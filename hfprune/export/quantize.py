"""``quanto-int4`` / ``quanto-int8``: weight-only quantization after pruning with optimum-quanto (the quantizer that
runs on CPU here; hfprune writes no quantizer of its own).

quanto quantizes every Linear but the LM head with asymmetric min/max scales per group of 128 input features when
the input width is a multiple of 128 (else 96, 64, 32, and else one scale per output row: it never refuses). Which
is why hfprune keeps FFN widths in multiples of 128 by default (`hfprune.structure.widths`). In bfloat16, 4-bit
layers also need output widths divisible by 16 (quanto's CPU kernel); layers that are not are left unquantized
and listed. The folder loads with ``optimum.quanto.QuantizedModelForCausalLM.from_pretrained`` (plain
``from_pretrained`` would silently re-initialise the quantized weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

GROUP_SIZE = 128
INSTALL = 'pip install "hfprune[quantize]" (or pip install optimum-quanto)'


def group_size(in_features: int) -> int | None:
    """The group quanto uses for ``in_features`` (None: one scale per output row)."""
    size = GROUP_SIZE
    if in_features <= size:
        return None
    while in_features % size and size > 32:
        size -= 32
    return size if in_features % size == 0 else None


def require_quanto() -> None:
    """optimum-quanto is importable (checked before any model is loaded)."""
    try:
        import optimum.quanto  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"Quantized exports need optimum-quanto, which is not installed ({e.name or e}); "
                          f"{INSTALL}.") from None


def quantize_weights(model: nn.Module, bits: int) -> tuple[nn.Module, dict[str, Any]]:
    """The quanto-quantized model and what was done per layer (group sizes, layers left in float)."""
    require_quanto()
    from optimum.quanto import QuantizedModelForCausalLM, qint4, qint8

    if not hasattr(model, "generate"):
        raise ConfigError(f"quanto exports are for causal language models; {type(model).__name__} is not one.")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    skipped = sorted(n for n, m in linears.items()
                     if bits == 4 and model.dtype == torch.bfloat16 and m.out_features % 16)
    groups = {n: group_size(m.in_features) for n, m in linears.items() if n not in skipped}
    qmodel = QuantizedModelForCausalLM.quantize(model, weights=qint4 if bits == 4 else qint8,
                                                exclude=["lm_head", *skipped])
    summary = {"quantizer": "optimum-quanto", "bits": bits, "group_size": GROUP_SIZE,
               "layers": len(groups), "grouped_128": sum(g == GROUP_SIZE for g in groups.values()),
               "other_groups": {n: g for n, g in groups.items() if g != GROUP_SIZE}, "left_in_float": skipped}
    return qmodel, summary
