"""Teacher outputs computed once (`TeacherCache`): the frozen teacher's top-k log-probabilities per token of every
training row, so distillation steps run the student only.

Why: the teacher is frozen and in eval mode, so its outputs on a row never change. Live distillation recomputes them
at every step and every epoch, and again in every run that distils another student on the same data (a sweep, the
equal-budget comparison). The cache runs the teacher once per distinct row, and is saved under ``$HFPRUNE_CACHE``
(``teacher/``) keyed by the teacher's weights, the rows, ``k`` and the temperature, so later runs reuse it.

What is kept (hfprune extension; an approximation unless ``k`` covers the vocabulary): per token, the teacher's
``k`` most likely tokens with their log-probabilities at the distillation temperature (normalised over the whole
vocabulary) and the log of the remaining mass. The loss (`hfprune.trainer.losses.top_k_distillation_loss`) is the
KL divergence between teacher and student over those ``k`` tokens plus one bucket for all the others. It equals the
full KL when ``k`` is the vocabulary size and is never larger otherwise (grouping outcomes cannot increase a KL
divergence), so it under-weights the teacher's tail; the sparse-logit distillation literature (e.g. Anshumann et
al., 2025, "Sparse Logit Sampling") documents that bias of top-k caching.

Rows are found again by their tokens (a hash of the non-padding ``input_ids``), so any shuffling, any split across
processes and any padding collator work; a collator that changes the tokens (random masking) cannot use the cache
and gets an error naming the option.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...calibration.generated import cache_dir, fingerprint, save_cache_file
from ...errors import ConfigError, TrainingError
from ...utils.distributed import broadcast_object, gather_objects, is_main_process, rank_world

#: the cache is held in memory: refuse one larger than this before computing it
MAX_BYTES = 8 * 2 ** 30
_ROW_KEYS = {"input_ids", "attention_mask", "labels"}


def row_tokens(input_ids: Any, attention_mask: Any = None) -> torch.Tensor:
    """The non-padding token ids of one row (1-D int64)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    if attention_mask is None:
        return ids
    return ids[torch.as_tensor(attention_mask).reshape(-1).bool()]


def row_key(tokens: torch.Tensor) -> bytes:
    """A 16-byte digest of a row's tokens (how a training batch's rows are found in the cache)."""
    return hashlib.blake2b(tokens.to(torch.int64).cpu().numpy().tobytes(), digest_size=16).digest()


def distinct_rows(dataset: Any) -> list[torch.Tensor]:
    """The distinct token rows of a map-style dataset of causal-LM rows, in first-seen order."""
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ConfigError("RecoveryConfig.teacher_top_k caches the teacher's outputs on every training row before "
                          "training, and needs a map-style train_dataset (a list or datasets.Dataset of rows with "
                          "input_ids); set teacher_top_k=None for an iterable dataset.")
    seen: dict[bytes, torch.Tensor] = {}
    for i in range(len(dataset)):
        row = dataset[i]
        if not isinstance(row, dict) or "input_ids" not in row:
            raise ConfigError("RecoveryConfig.teacher_top_k needs training rows with 'input_ids' (tokenized text).")
        extra = sorted(set(row) - _ROW_KEYS)
        if extra:
            raise ConfigError(f"RecoveryConfig.teacher_top_k caches rows by their input_ids alone, and these rows "
                              f"also carry {extra}, which would change the teacher's output; set teacher_top_k=None "
                              "(live teacher).")
        tokens = row_tokens(row["input_ids"], row.get("attention_mask"))
        seen.setdefault(row_key(tokens), tokens)
    return list(seen.values())


class TeacherCache:
    """Top-k teacher log-probabilities for a set of rows, looked up by the rows' tokens (see the module)."""

    def __init__(self, keys: list[bytes], top_logprobs: list[torch.Tensor], top_ids: list[torch.Tensor],
                 tail: list[torch.Tensor], k: int, temperature: float) -> None:
        self.k, self.temperature = k, temperature
        self.index = {key: i for i, key in enumerate(keys)}
        self.top_logprobs, self.top_ids, self.tail = top_logprobs, top_ids, tail
        self.build_seconds = 0.0
        self.reused = False

    def __len__(self) -> int:
        return len(self.index)

    # --- building ------------------------------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def compute(cls, teacher: nn.Module, rows: list[torch.Tensor], k: int, temperature: float,
                batch_size: int = 8) -> "TeacherCache":
        """Run ``teacher`` on ``rows`` (rows of equal length batched together) and keep the top-k per token."""
        device = next(teacher.parameters()).device
        top_lp: list[Any] = [None] * len(rows)
        top_ids: list[Any] = [None] * len(rows)
        tails: list[Any] = [None] * len(rows)
        by_length: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_length.setdefault(len(r), []).append(i)
        for idx in by_length.values():
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                ids = torch.stack([rows[i] for i in part]).to(device)
                logits = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                if logits.dim() != 3 or logits.shape[:2] != ids.shape:
                    raise ConfigError(f"RecoveryConfig.teacher_top_k caches per-token logits of language models; "
                                      f"{type(teacher).__name__} gives logits of shape {tuple(logits.shape)}. Set "
                                      "teacher_top_k=None.")
                lp = torch.log_softmax(logits.float() / temperature, dim=-1)
                top, top_i = lp.topk(min(k, lp.shape[-1]), dim=-1)
                tail = lp.scatter(-1, top_i, float("-inf")).logsumexp(-1)
                for j, i in enumerate(part):
                    top_lp[i], top_ids[i], tails[i] = top[j].cpu(), top_i[j].to(torch.int32).cpu(), tail[j].cpu()
        return cls([row_key(r) for r in rows], top_lp, top_ids, tails, k, temperature)

    @classmethod
    def for_dataset(cls, teacher: nn.Module, dataset: Any, k: int, temperature: float, batch_size: int = 8,
                    use_disk: bool = True) -> "TeacherCache":
        """The cache of ``dataset``'s distinct rows: read from ``$HFPRUNE_CACHE/teacher`` when a run with the same
        teacher, rows, k and temperature saved it, else computed (each process a share, then gathered) and saved.
        Every process ends with the whole cache (a process may draw any row)."""
        t = time.perf_counter()
        rows = distinct_rows(dataset)
        vocab = int(getattr(getattr(teacher, "config", None), "vocab_size", 0) or k)
        kept = min(k, vocab)
        size = sum(len(r) for r in rows) * (kept * 8 + 4)
        if size > MAX_BYTES:
            raise ConfigError(f"RecoveryConfig.teacher_top_k={k} would hold {size / 2 ** 30:.1f} GiB of teacher "
                              f"outputs in memory ({sum(len(r) for r in rows)} tokens x {kept} entries); lower "
                              "teacher_top_k, train on fewer tokens, or set teacher_top_k=None (live teacher).")
        digest = hashlib.sha256(b"".join(row_key(r) for r in rows)).hexdigest()[:16]
        dtype = str(next(teacher.parameters()).dtype)
        key = fingerprint(teacher, "teacher-top-k", k, temperature, digest, dtype)
        path = cache_dir("teacher") / f"{key}.safetensors"
        found = broadcast_object(use_disk and is_main_process() and path.is_file())
        if found:
            cache = broadcast_object(cls.load(path) if is_main_process() else None)
            cache.reused = True
        else:
            rank, world = rank_world()
            mine = cls.compute(teacher, rows[rank::world], k, temperature, batch_size)
            parts = gather_objects(mine)
            cache = cls.merge(parts, k, temperature)
            if use_disk and is_main_process():
                cache.save(path)
        cache.build_seconds = time.perf_counter() - t
        return cache

    @classmethod
    def merge(cls, parts: list["TeacherCache"], k: int, temperature: float) -> "TeacherCache":
        keys, lp, ids, tail = [], [], [], []
        for p in parts:
            for key, i in p.index.items():
                keys.append(key)
                lp.append(p.top_logprobs[i])
                ids.append(p.top_ids[i])
                tail.append(p.tail[i])
        return cls(keys, lp, ids, tail, k, temperature)

    # --- disk ----------------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """One safetensors file (`save_cache_file`: written whole or not at all)."""
        tensors = {"keys": torch.tensor([list(k) for k in self.index], dtype=torch.uint8).reshape(-1, 16),
                   "lengths": torch.tensor([len(t) for t in self.tail], dtype=torch.int64),
                   "top_logprobs": torch.cat(self.top_logprobs), "top_ids": torch.cat(self.top_ids),
                   "tail": torch.cat(self.tail)}
        save_cache_file(tensors, path, metadata={"k": str(self.k), "temperature": repr(self.temperature)})

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {name: f.get_tensor(name) for name in f.keys()}
        sizes = t["lengths"].tolist()
        keys = [bytes(row.tolist()) for row in t["keys"]]
        return cls(keys, list(t["top_logprobs"].split(sizes)), list(t["top_ids"].split(sizes)),
                   list(t["tail"].split(sizes)), int(meta["k"]), float(meta["temperature"]))

    # --- lookup --------------------------------------------------------------------------------------------------
    def batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top log-probs [B, L, k], top ids [B, L, k], tail log-mass [B, L]) for a padded training batch, on the
        batch's device; padding positions hold zeros (the loss leaves them out)."""
        b, length = input_ids.shape
        k = self.top_ids[0].shape[-1] if self.top_ids else self.k
        lp = torch.zeros(b, length, k)
        ids = torch.zeros(b, length, k, dtype=torch.long)
        tail = torch.zeros(b, length)
        tokens = input_ids.cpu()
        masks = attention_mask.bool().cpu() if attention_mask is not None else torch.ones(b, length, dtype=torch.bool)
        for r, mask in enumerate(masks):
            i = self.index.get(row_key(tokens[r][mask]))
            if i is None:
                raise TrainingError("A training row is not in the teacher cache: its tokens differ from every row of "
                                    "train_dataset (a collator that changes input_ids, e.g. random masking, cannot "
                                    "use cached teacher outputs). Set RecoveryConfig.teacher_top_k=None.")
            lp[r, mask], ids[r, mask], tail[r, mask] = self.top_logprobs[i], self.top_ids[i].long(), self.tail[i]
        device = input_ids.device
        return lp.to(device), ids.to(device), tail.to(device)

    def describe(self) -> dict[str, Any]:
        """What the report's recovery entry says of the cache."""
        return {"top_k": self.k, "temperature": self.temperature, "rows": len(self), "reused": self.reused,
                "seconds": round(self.build_seconds, 2)}
