"""LoRA recovery through peft: adapters on a pruned (compacted) model, merged back before saving so the published
folder is a plain checkpoint (same shapes as the pruned model, no peft needed to load it).

Adapters go on the compacted model, never on a masked one: a LoRA update of a removed neuron's rows would bring
the neuron back when merged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import ConfigError, PruningError
from .config import RecoveryConfig


def require_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise PruningError("LoRA recovery needs peft: pip install 'hfprune[lora]' (or pip install peft).") from None
    return peft


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def check_lora_targets(model: nn.Module, targets: list[str] | None) -> None:
    """Raise `ConfigError` for a target suffix that names no Linear layer of ``model`` (before any training)."""
    if targets is None:
        return
    names = _linear_names(model)
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise ConfigError(f"RecoveryConfig.lora_targets has {t!r}, which names no Linear layer of "
                              f"{type(model).__name__}; its Linear layers end in: {', '.join(suffixes)}.")


def add_lora(model: nn.Module, config: RecoveryConfig) -> nn.Module:
    """``model`` wrapped by peft with rank-``lora_r`` adapters on ``lora_targets`` (default every Linear layer but
    the output head); only the adapters train."""
    peft = require_peft()
    check_lora_targets(model, config.lora_targets)
    lora = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=list(config.lora_targets) if config.lora_targets else "all-linear",
                           bias="none")
    return peft.get_peft_model(model, lora)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with the adapters added into its weights (a no-op for a model without adapters)."""
    return model.merge_and_unload() if is_lora(model) else model
