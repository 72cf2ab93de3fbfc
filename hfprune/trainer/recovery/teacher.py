"""The teacher side of recovery (`Distiller`): the frozen unpruned model, its precision, and the loss terms that
compare it with the student (logits, hidden states, attention outputs; see `hfprune.trainer.recovery.config`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...structure import adapter_for
from ..losses import distillation_loss, top_k_distillation_loss

from .config import RecoveryConfig
from .teacher_cache import TeacherCache


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
        self.cache: TeacherCache | None = None  # set by the trainer when RecoveryConfig.teacher_top_k is given
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
        keep = mask if mask is not None else (labels != -100 if labels is not None else None)
        if keep is not None and tuple(keep.shape) != tuple(outputs.logits.shape[:-1]):
            keep = None  # sequence-level logits (a classifier): every row counts
        if self.cache is not None:  # logit distillation only (RecoveryConfig checks it): no teacher forward
            top, ids, tail = self.cache.batch(inputs["input_ids"], mask)
            kd = top_k_distillation_loss(outputs.logits, top, ids, tail, cfg.temperature, keep)
            return {"kd": cfg.distillation_weight * kd}
        t_out, t_attn = self.teacher_forward(inputs)
        terms: dict[str, torch.Tensor] = {}
        if cfg.distillation_weight > 0:
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
