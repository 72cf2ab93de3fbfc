"""The pruned checkpoint: its typed record (`PruningInfo`, written as ``pruning_config.json``) and the one writer.

Every folder hfprune writes (`PruningResult.save_pretrained`, `PruningTrainer.save_model`, the CLI's save of plain
torch modules) goes through `save_checkpoint` or, when Trainer has already written the weights,
`write_pruning_files`: weights (safetensors), the config, ``pruning_config.json``, ``pruning_report.json`` and the
model card, in a temporary folder moved into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file
from torch import nn

from .io import atomic_output_dir
from ..structure.loaders import Loader
from ..report.card import write_model_card

if TYPE_CHECKING:
    from ..config.pruning_config import PruningConfig
    from ..report.pruning_report import PruningReport

_AUTO_CLASSES = ("CAUSAL_LM", "SEQUENCE_CLASSIFICATION", "IMAGE_CLASSIFICATION", "MASKED_LM",
                 "TOKEN_CLASSIFICATION", "QUESTION_ANSWERING")




def auto_class_name(model: nn.Module) -> str:
    """The `transformers` Auto class that loads a model of this class (e.g. GPT2LMHeadModel -> ForCausalLM)."""
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    for task in _AUTO_CLASSES:
        if name in getattr(modeling_auto, f"MODEL_FOR_{task}_MAPPING_NAMES").values():
            return "AutoModelFor" + "".join(w.capitalize() for w in task.split("_")).replace("Lm", "LM")
    return "AutoModel"


@dataclass
class PruningInfo:
    """What ``pruning_config.json`` records beside the config: where the model came from and how to load it."""

    base_model: str | None
    loader: Loader
    auto_class: str
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # per group: kind, total, kept
    compacted: bool = True  # False: masks still applied (PruningTrainer with keep_masks=True)
    training: dict[str, Any] | None = None  # the PruningTrainer run, if any
    example: str | None = None  # plain torch modules: the packaged example that rebuilds the architecture
    recovery: dict[str, Any] | None = None  # RecoveryTrainer: the method and tokens trained after pruning

    def to_dict(self) -> dict[str, Any]:
        data = {"base_model": self.base_model, "loader": self.loader.value, "auto_class": self.auto_class,
                "groups": self.groups, "compacted": self.compacted}
        for key in ("training", "example", "recovery"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningInfo":
        """The record of a ``pruning_config.json`` read by `read_pruning_file` (which checked the loader)."""
        return cls(base_model=data.get("base_model"), loader=Loader(data.get("loader", Loader.TRANSFORMERS.value)),
                   auto_class=data.get("auto_class", "AutoModel"), groups=dict(data.get("groups") or {}),
                   compacted=bool(data.get("compacted", True)), training=data.get("training"),
                   example=data.get("example"), recovery=data.get("recovery"))


def write_pruning_files(folder: str, config: "PruningConfig", info: PruningInfo,
                        report: "PruningReport | None") -> None:
    """``pruning_config.json``, and with a report also ``pruning_report.json`` and (Hugging Face models) the card."""
    config.save_pretrained(folder, extra=info.to_dict())
    if report is None:
        return
    report.save(folder)
    if info.loader is not Loader.STATE_DICT:
        write_model_card(folder)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: "PruningConfig", info: PruningInfo,
                    report: "PruningReport", tokenizer: Any = None, overwrite: bool = False) -> str:
    """Write the whole folder into a temporary sibling and move it into place (an existing non-empty folder needs
    ``overwrite``). Hugging Face models: ``save_pretrained`` (safetensors); plain modules: their state dict."""
    with atomic_output_dir(path, overwrite) as tmp:
        if info.loader is Loader.STATE_DICT:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, os.path.join(tmp, "model.safetensors"))
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_pruning_files(tmp, config, info, report)
    return os.fspath(path)
