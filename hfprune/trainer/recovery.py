"""Recovery after pruning: the settings (`RecoveryConfig`) and the teacher side (`Distiller`) shared by
`PruningTrainer` (prune while fine-tuning) and `RecoveryTrainer` (fine-tune an already pruned model).

Why a trainer-side dataclass and not more `PruningConfig` fields: these settings say how a model is *trained*
after (or while) it is pruned, not what is removed; `prune()` never reads them, and a pruned folder's
``pruning_config.json`` must stay the same whether or not it was recovered. The recovery that ran is recorded in
``pruning_report.json`` (``recovery``) and the card instead. This is the one place distillation is configured, for
both trainers.

Losses (weights add up with the task loss ``(1 - distillation_weight) * task``):

* logits: KL(teacher || student) at ``temperature``, scaled by T² (Hinton et al.), padding left out;
* hidden states (``hidden_weight``): per mapped block, the mean squared error between the student's block output
  (projected when its hidden size differs) and the teacher's, divided by the teacher's mean square so the weight
  does not depend on the model's activation scale (hfprune extension: the normalisation);
* attention outputs (``attention_weight``): the same normalised error on each block's attention-module output
  (before the residual add), as in TinyBERT's attention-based layer distillation (hfprune extension: the output,
  not the attention maps, is matched, so pruned heads do not break the correspondence).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..structure import adapter_for
from .losses import distillation_loss

PROJECTIONS_FILE = "hfprune_recovery.safetensors"
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RecoveryConfig:
    """How a pruned model is trained back. Invalid values raise `ConfigError` at construction."""

    max_tokens: int | None = _f(None, "Training-token budget; converted to TrainingArguments.max_steps from the "
                                "tokens per batch (non-padding tokens of the training rows). None: the "
                                "TrainingArguments' own max_steps / epochs.")
    distillation_weight: float = _f(0.0, "Weight of the logit KL to the teacher; the task loss gets 1 - weight. "
                                    "0: plain fine-tuning (no teacher forward).")
    temperature: float = _f(1.0, "Temperature of the logit KL.")
    hidden_weight: float = _f(0.0, "Weight of the hidden-state loss (block outputs); needs a teacher.")
    attention_weight: float = _f(0.0, "Weight of the attention-output loss; needs a teacher.")
    layer_map: list[int] | None = _f(None, "Teacher block matched to each student block; default: the same index "
                                     "when the depths are equal, else evenly spread (last to last).")
    projection: str = _f("learned", "When the student's hidden size differs from the teacher's: 'learned' (a "
                         "linear map per block, trained with the student, saved in checkpoints) or 'fixed' (a "
                         "seeded random orthonormal map of the teacher's states to the student's size).")
    teacher_dtype: str = _f("auto", "Teacher precision: 'auto' (bfloat16 on CUDA devices that support it, "
                            "float32 elsewhere), 'float32', 'bfloat16' or 'float16'.")
    lora_r: int | None = _f(None, "LoRA rank (RecoveryTrainer only): train low-rank adapters instead of all "
                            "weights; merged into the weights before saving. None: full fine-tuning.")
    lora_alpha: int = _f(16, "LoRA scaling numerator (peft's lora_alpha).")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA branch.")
    lora_targets: list[str] | None = _f(None, "Module-name suffixes that get adapters (e.g. ['q_proj', "
                                        "'down_proj']); default every Linear layer except the output head.")
    seed: int = _f(0, "Seed of the fixed projections and the learned projections' initialisation.")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def distills(self) -> bool:
        """Whether a teacher forward is needed."""
        return self.distillation_weight > 0 or self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def method(self) -> str:
        """A short name of the recovery: 'distillation', 'finetune', 'lora' or 'lora+distillation'."""
        base = "distillation" if self.distills else "finetune"
        if self.lora_r is None:
            return base
        return "lora" if base == "finetune" else "lora+distillation"

    def validate(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"RecoveryConfig.{name}={getattr(self, name)!r} is not allowed: {allowed}.")

        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool)
                                            or self.max_tokens <= 0):
            raise bad("max_tokens", "a positive number of training tokens (e.g. 250000), or None to train for "
                      "TrainingArguments.max_steps / num_train_epochs")
        if not isinstance(self.distillation_weight, (int, float)) or not 0 <= self.distillation_weight <= 1:
            raise bad("distillation_weight", "a number in [0, 1]")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise bad("temperature", "a positive number")
        for name in ("hidden_weight", "attention_weight", "lora_dropout"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "a number >= 0")
        if self.layer_map is not None and (isinstance(self.layer_map, str)
                                           or not all(isinstance(i, int) and i >= 0 for i in self.layer_map)):
            raise bad("layer_map", "a list of teacher block indices, one per student block")
        if self.projection not in ("learned", "fixed"):
            raise bad("projection", "'learned' or 'fixed'")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise bad("teacher_dtype", "one of " + ", ".join(map(repr, TEACHER_DTYPES)))
        if self.lora_r is not None and (not isinstance(self.lora_r, int) or self.lora_r < 1):
            raise bad("lora_r", "a positive rank (e.g. 16), or None for full fine-tuning")
        if not isinstance(self.lora_alpha, int) or self.lora_alpha < 1:
            raise bad("lora_alpha", "a positive integer")
        if self.lora_targets is not None and (isinstance(self.lora_targets, str) or not self.lora_targets
                                              or not all(isinstance(s, str) for s in self.lora_targets)):
            raise bad("lora_targets", "a non-empty list of module-name suffixes such as ['q_proj', 'v_proj']")


# --- the teacher ---------------------------------------------------------------------------------------------------
def teacher_dtype(name: str, device: torch.device) -> torch.dtype:
    """The precision the teacher runs in: bf16 on CUDA for 'auto' (when supported), fp32 on CPU unless asked."""
    if name == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, name)


def _config_of(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _vocab(model: nn.Module) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return getattr(_config_of(model), "vocab_size", None)


def check_teacher(student: nn.Module, teacher: nn.Module, tokenizer: Any = None, teacher_tokenizer: Any = None) -> None:
    """Raise `ConfigError` when the teacher cannot be distilled from: its logits do not cover the same vocabulary."""
    vs, vt = _vocab(student), _vocab(teacher)
    if vs is not None and vt is not None and vs != vt:
        raise ConfigError(f"The teacher's vocabulary has {vt} tokens and the student's {vs}: logit distillation "
                          "needs the same tokenizer. Pass the unpruned model the student was pruned from as teacher.")
    if tokenizer is not None and teacher_tokenizer is not None:
        if hasattr(tokenizer, "get_vocab") and tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise ConfigError("The teacher's tokenizer maps tokens to different ids than the student's: logit "
                              "distillation compares the same token ids. Use the tokenizer of the unpruned model "
                              "for both.")


def freeze(teacher: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The teacher in eval mode (no dropout), without gradients, in ``dtype`` on ``device``."""
    teacher = teacher.to(device=device, dtype=dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


# --- intermediate states -------------------------------------------------------------------------------------------
def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every block, in order (from the family adapter's attention suffixes)."""
    adapter = adapter_for(model)
    if adapter is None:
        return []
    out = []
    for name, module in model.named_modules():
        for suffix, spec in adapter.attention.items():
            if (name == suffix or name.endswith("." + suffix)) and hasattr(module, spec.o.split(".")[0]):
                out.append(module)
    return out


def default_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student block i -> teacher block i (same depth), else evenly spread with the last mapped to the last."""
    if n_student == n_teacher:
        return list(range(n_student))
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def normalised_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the kept positions, divided by the teacher's mean square there."""
    s, t = student.float(), teacher.float()
    if mask is not None:
        m = mask.to(s.device).bool().reshape(-1)
        s, t = s.reshape(-1, s.shape[-1])[m], t.reshape(-1, t.shape[-1])[m]
    return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)


class OutputCapture:
    """Forward hooks keeping the first output of each module inside `capture()` (a gradient-checkpointing
    recompute calls the module again: the first, graph-connected output is the one kept)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self.active = False
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            if self.active and self.outputs[i] is None:
                self.outputs[i] = output[0] if isinstance(output, tuple) else output
        return keep

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[torch.Tensor | None]]:
        self.outputs, self.active = [None] * len(self.handles), True
        try:
            yield self.outputs
        finally:
            self.outputs, self.active = [None] * len(self.handles), False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A [rows, cols] matrix with orthonormal rows (rows <= cols), seeded."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=g))
    return q.T.contiguous()


class Distiller:
    """The frozen teacher and the loss terms comparing the student to it (see the module docstring)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: RecoveryConfig, device: torch.device) -> None:
        self.config = config
        self.teacher = freeze(teacher, teacher_dtype(config.teacher_dtype, device), device)
        self.layer_map: list[int] = []
        self.projections: nn.ModuleList | None = None
        self.fixed: list[torch.Tensor] = []
        self.student_attn: OutputCapture | None = None
        self.teacher_attn: OutputCapture | None = None
        if config.hidden_weight > 0 or config.attention_weight > 0:
            self._intermediate(student, device)

    def _intermediate(self, student: nn.Module, device: torch.device) -> None:
        cs, ct = _config_of(student), _config_of(self.teacher)
        ns, nt = getattr(cs, "num_hidden_layers", None), getattr(ct, "num_hidden_layers", None)
        if ns is None or nt is None:
            raise ConfigError("Intermediate-state distillation needs Hugging Face models with num_hidden_layers in "
                              "their configs; set hidden_weight and attention_weight to 0.")
        layer_map = self.config.layer_map or default_layer_map(ns, nt)
        if len(layer_map) != ns or max(layer_map) >= nt:
            raise ConfigError(f"RecoveryConfig.layer_map={layer_map} must give one teacher block (0..{nt - 1}) for "
                              f"each of the student's {ns} blocks.")
        self.layer_map = list(layer_map)
        hs, ht = cs.hidden_size, ct.hidden_size
        if hs != ht:
            if hs > ht:
                raise ConfigError(f"The student's hidden size ({hs}) is larger than the teacher's ({ht}); pass the "
                                  "unpruned model as teacher.")
            if self.config.projection == "learned":
                with torch.random.fork_rng(devices=[]):  # seeded initialisation, the global RNG left as it was
                    torch.manual_seed(self.config.seed)
                    self.projections = nn.ModuleList(nn.Linear(hs, ht, bias=False) for _ in range(ns)).to(device)
            else:
                self.fixed = [_orthonormal(hs, ht, self.config.seed + i).to(device) for i in range(ns)]
        if self.config.attention_weight > 0:
            s_mods, t_mods = attention_modules(student), attention_modules(self.teacher)
            if len(s_mods) != ns or len(t_mods) != nt:
                raise ConfigError(f"Attention-output distillation found {len(s_mods)} student and {len(t_mods)} "
                                  f"teacher attention modules for {ns} and {nt} blocks (family "
                                  f"{getattr(cs, 'model_type', '?')!r} is not supported); set attention_weight=0.")
            self.student_attn, self.teacher_attn = OutputCapture(s_mods), OutputCapture(t_mods)

    # --- one batch ------------------------------------------------------------------------------------------------
    @property
    def wants_hidden(self) -> bool:
        return self.config.hidden_weight > 0

    def student_capture(self) -> contextlib.AbstractContextManager:
        return self.student_attn.capture() if self.student_attn is not None else contextlib.nullcontext([])

    @torch.no_grad()
    def teacher_forward(self, inputs: dict[str, Any]) -> tuple[Any, list[torch.Tensor | None]]:
        kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        if self.wants_hidden:
            kwargs["output_hidden_states"] = True
        ctx = self.teacher_attn.capture() if self.teacher_attn is not None else contextlib.nullcontext([])
        with ctx as attn:
            out = self.teacher(**kwargs)
            attn = list(attn)
        return out, attn

    def _project(self, i: int, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.projections is not None:
            return self.projections[i](s), t
        if self.fixed:
            return s, t.float() @ self.fixed[i].T
        return s, t

    def losses(self, inputs: dict[str, Any], outputs: Any, student_attn: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """The weighted teacher terms of this batch: {"kd", "hidden", "attention"} (those with a weight)."""
        cfg = self.config
        mask = inputs.get("attention_mask")
        labels = inputs.get("labels")
        t_out, t_attn = self.teacher_forward(inputs)
        terms: dict[str, torch.Tensor] = {}
        if cfg.distillation_weight > 0:
            keep = mask if mask is not None else (labels != -100 if labels is not None else None)
            if keep is not None and tuple(keep.shape) != tuple(outputs.logits.shape[:-1]):
                keep = None  # sequence-level logits (a classifier): every row counts
            terms["kd"] = cfg.distillation_weight * distillation_loss(outputs.logits, t_out.logits, cfg.temperature,
                                                                      keep)
        if cfg.hidden_weight > 0:
            s_h, t_h = outputs.hidden_states[1:], t_out.hidden_states[1:]
            parts = [normalised_mse(*self._project(i, s_h[i], t_h[j]), mask) for i, j in enumerate(self.layer_map)]
            terms["hidden"] = cfg.hidden_weight * torch.stack(parts).mean()
        if cfg.attention_weight > 0:
            parts = []
            for i, j in enumerate(self.layer_map):
                s, t = student_attn[i], t_attn[j]
                if s is None or t is None:
                    raise ConfigError("An attention module produced no output in this forward pass; set "
                                      "attention_weight=0 for this model.")
                if torch.is_grad_enabled() and not s.requires_grad:
                    raise ConfigError("Attention outputs carry no gradient under reentrant gradient checkpointing; "
                                      "pass gradient_checkpointing_kwargs={'use_reentrant': False} to "
                                      "TrainingArguments, or set attention_weight=0.")
                parts.append(normalised_mse(*self._project(i, s, t), mask))
            terms["attention"] = cfg.attention_weight * torch.stack(parts).mean()
        return terms

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters on the teacher side (learned projections), for the optimizer."""
        return list(self.projections.parameters()) if self.projections is not None else []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()} \
            if self.projections is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.projections is not None and state:
            self.projections.load_state_dict(state)


# --- the token budget ----------------------------------------------------------------------------------------------
def tokens_per_row(dataset: Any, sample: int = 1000) -> float:
    """Mean non-padding tokens per training row (the first ``sample`` rows), from attention_mask or input_ids."""
    if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        raise ConfigError("RecoveryConfig.max_tokens needs a map-style train_dataset with rows of input_ids, to "
                          "convert the token budget into optimizer steps.")
    n = min(sample, len(dataset))
    total = 0
    for i in range(n):
        row = dataset[i]
        if not isinstance(row, dict) or "input_ids" not in row:
            raise ConfigError("RecoveryConfig.max_tokens needs training rows with 'input_ids' (tokenized text).")
        mask = row.get("attention_mask")
        total += int(sum(mask)) if mask is not None else len(row["input_ids"])
    return total / n


def steps_for_tokens(max_tokens: int, per_row: float, args: Any) -> int:
    """Optimizer steps that consume ``max_tokens`` (rounded up): tokens per step = rows per step x tokens per row."""
    rows = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return max(1, math.ceil(max_tokens / (rows * per_row)))


def pack_texts(tokenizer: Any, texts: list[str], seq_len: int, max_tokens: int | None = None) -> list[dict[str, list[int]]]:
    """Causal-LM training rows: the texts joined with EOS and cut into ``seq_len``-token rows (labels = input ids;
    the model shifts them); the incomplete tail is dropped."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if max_tokens and len(ids) >= max_tokens:
            break
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"The recovery text holds {len(ids)} tokens, fewer than one row of seq_len={seq_len}; "
                          "pass more text or a smaller seq_len.")
    return [{"input_ids": ids[i * seq_len:(i + 1) * seq_len], "labels": ids[i * seq_len:(i + 1) * seq_len],
             "attention_mask": [1] * seq_len} for i in range(n)]
