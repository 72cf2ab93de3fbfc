"""Turn whatever calibration data the user has into a list of model-ready batches.

Accepted: a list of strings plus a tokenizer (packed into `seq_len`-token sequences), a `datasets.Dataset` (a
``text`` or ``input_ids`` column), a `DataLoader` or any iterable of batches (each a tensor or a Mapping of tensors:
a dict, or the `BatchEncoding` a tokenizer or a `DataCollatorWithPadding` returns), one Mapping of tensors (e.g.
``tokenizer(texts, padding=True, return_tensors="pt")``; split into ``batch_size`` rows), a tensor (token ids or
images), or ``"random"`` (data-agnostic: uniform token ids, Gaussian images). ``calibration.source="generated"``
needs no data (the model samples its own, `hfprune.calibration.generated`); ``"mixed"`` adds such samples to the
data given. Everything is checked before any
forward pass. Mappings become plain dicts, so the model is always called as ``model(**batch)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config.pruning_config import PruningConfig
from ..errors import CalibrationError
from .generated import TOP_P, generated_token_ids
from .checks import check_batches, check_config_for_model, is_vision, resolved_seq_len

Batch = Any  # a dict of tensors (Hugging Face models) or a tensor (plain modules)


@dataclass
class CalibrationSet:
    """Batches plus what the report and the model card say about them."""

    batches: list[Batch]
    source: str  # "data" | "random" | "generated" | "mixed"
    name: str | None = None
    num_samples: int = 0
    tokens: int = 0
    warnings: list[str] = field(default_factory=list)

    layout: str | None = None  # how texts became sequences: "packed windows" or "padded rows"

    def describe(self, seq_len: int) -> dict[str, Any]:
        """``seq_len`` is the token batches' own length when they have one (None when padded to different lengths,
        e.g. by `DataCollatorWithPadding`), else the configured one."""
        lengths = {b["input_ids"].shape[-1] for b in self.batches if isinstance(b, dict) and "input_ids" in b}
        if lengths:
            seq_len = lengths.pop() if len(lengths) == 1 else None
        out = {"source": self.source, "name": self.name, "num_samples": self.num_samples, "seq_len": seq_len,
               "tokens": self.tokens}
        if self.layout:
            out["layout"] = self.layout
        return out


def _chunks(items: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [items[i:i + batch_size] for i in range(0, items.shape[0], batch_size)]


def _ids_batches(ids: torch.Tensor, config: PruningConfig) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in _chunks(ids, config.calibration.batch_size)]


def random_calibration(model: nn.Module, config: PruningConfig, example_inputs: Any = None) -> CalibrationSet:
    """Data-agnostic inputs matched to the model: uniform token ids, or Gaussian images (pixels are normalised)."""
    g = torch.Generator().manual_seed(config.seed)
    cfg = getattr(model, "config", None)
    n = config.calibration.num_samples
    if cfg is not None and is_vision(model):
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        x = torch.randn(n, cfg.num_channels, size, size, generator=g)
        return CalibrationSet([{"pixel_values": b} for b in _chunks(x, config.calibration.batch_size)], "random",
                              "gaussian images", n, 0)
    if cfg is not None and getattr(cfg, "vocab_size", None):
        ids = torch.randint(0, cfg.vocab_size, (n, resolved_seq_len(config, model)), generator=g)
        return CalibrationSet(_ids_batches(ids, config), "random", "uniform token ids", n, ids.numel())
    if isinstance(example_inputs, torch.Tensor):
        x = torch.randn((n, *example_inputs.shape[1:]), generator=g)
        return CalibrationSet(_chunks(x, config.calibration.batch_size), "random", "gaussian inputs", n, 0)
    raise CalibrationError("Random (data-agnostic) calibration needs a model config with vocab_size or image "
                           "settings, or example_inputs for a plain module.")


def _pack_texts(texts: list[str], tokenizer: Any, config: PruningConfig, name: str | None,
                model: nn.Module) -> CalibrationSet:
    """Texts joined (EOS between them) and cut into windows of ``seq_len`` tokens; with ``seq_len="auto"``, texts
    too short for one window are calibrated as padded rows, one text a row, instead of being refused."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise CalibrationError("The calibration set is empty: it holds no non-blank text.")
    if tokenizer is None:
        raise CalibrationError("Calibration texts need a tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...).")
    seq_len, num_samples = resolved_seq_len(config, model), config.calibration.num_samples
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + ([sep] if sep is not None else [])
        if len(ids) >= num_samples * seq_len:
            break
    if len(ids) < seq_len and config.calibration.seq_len == "auto":
        return _padded_rows(texts, tokenizer, config, name, seq_len)
    if len(ids) < seq_len:
        raise CalibrationError(f"The calibration set is too short: {len(ids)} tokens, fewer than one sequence of "
                               f"calibration.seq_len={seq_len}. Pass more text, lower seq_len, or set it to 'auto' "
                               "(short texts are then calibrated as padded rows).")
    n = min(num_samples, len(ids) // seq_len)
    warnings = []
    if n < num_samples:
        warnings.append(f"calibration text gave {n} sequences of {seq_len} tokens, fewer than "
                        f"num_samples={num_samples}")
    seqs = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
    return CalibrationSet(_ids_batches(seqs, config), "data", name, n, seqs.numel(), warnings, "packed windows")


def _padded_rows(texts: list[str], tokenizer: Any, config: PruningConfig, name: str | None,
                 seq_len: int) -> CalibrationSet:
    """One text a row (at most ``seq_len`` tokens), padded to the longest with an attention mask."""
    rows = [{"input_ids": torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"][:seq_len])}
            for t in texts[: config.calibration.num_samples]]
    rows = [r for r in rows if len(r["input_ids"])]
    whole = stack_rows(rows, _pad_id(tokenizer))
    tokens = int(whole["attention_mask"].sum())
    batches = [{k: v[i:i + config.calibration.batch_size] for k, v in whole.items()}
               for i in range(0, len(rows), config.calibration.batch_size)]
    note = (f"calibration texts hold {tokens} tokens, fewer than one window of {seq_len}: calibrated on "
            f"{len(rows)} texts as padded rows (seq_len='auto')")
    return CalibrationSet(batches, "data", name, len(rows), tokens, [note], "padded rows")


def _from_tensor(x: torch.Tensor, model: nn.Module, config: PruningConfig, name: str | None) -> CalibrationSet:
    if x.numel() == 0 or x.shape[0] == 0:
        raise CalibrationError("The calibration set is empty: the tensor has no samples.")
    x = x[: config.calibration.num_samples]
    hf = hasattr(model, "config")
    if not x.is_floating_point():
        if x.dim() != 2:
            raise CalibrationError(f"Token ids must be a [samples, tokens] tensor, got shape {tuple(x.shape)}.")
        return CalibrationSet(_ids_batches(x, config), "data", name, x.shape[0], x.numel())
    batches = [{"pixel_values": b} if hf else b for b in _chunks(x, config.calibration.batch_size)]
    return CalibrationSet(batches, "data", name, x.shape[0], 0)


def _as_batch(b: Any) -> Batch:
    """A tensor, or a Mapping of tensors as a plain dict (a `BatchEncoding` is a Mapping but not a dict)."""
    if isinstance(b, torch.Tensor):
        return b
    if isinstance(b, Mapping) and b and isinstance(next(iter(b.values())), torch.Tensor):
        return dict(b)
    hint = " (tokenize with return_tensors='pt')" if isinstance(b, Mapping) else ""
    raise CalibrationError(f"Calibration batches must be tensors or Mappings of tensors{hint}, got "
                           f"{type(b).__name__}.")


def _batch_tokens(b: Batch) -> int:
    """Real tokens of a batch: the attention mask's ones when there is one (padding is not data)."""
    if not isinstance(b, dict) or "input_ids" not in b:
        return 0
    mask = b.get("attention_mask")
    return int(mask.sum()) if isinstance(mask, torch.Tensor) else int(b["input_ids"].numel())


def _from_iterable(data: Iterable, config: PruningConfig, name: str | None) -> CalibrationSet:
    batches, n, tokens = [], 0, 0
    for b in data:
        if n >= config.calibration.num_samples:
            break
        b = _as_batch(b)
        batches.append(b)
        n += (b if isinstance(b, torch.Tensor) else next(iter(b.values()))).shape[0]
        tokens += _batch_tokens(b)
    if not batches:
        raise CalibrationError("The calibration set is empty: the data loader gave no batch.")
    return CalibrationSet(batches, "data", name, n, tokens)


def _from_mapping(data: Mapping, config: PruningConfig, name: str | None) -> CalibrationSet:
    """One Mapping of ``[samples, ...]`` tensors (a tokenizer's output): its first ``num_samples`` rows in batches."""
    whole = _as_batch(data)
    rows = {t.shape[0] for t in whole.values() if isinstance(t, torch.Tensor)}
    if len(rows) != 1:
        raise CalibrationError(f"The calibration tensors have different numbers of rows {sorted(rows)}; give one "
                               "[samples, ...] tensor per input.")
    n = min(rows.pop(), config.calibration.num_samples)
    if n == 0:
        raise CalibrationError("The calibration set is empty: the tensors have no rows.")
    return _from_iterable(({k: v[i:min(i + config.calibration.batch_size, n)] for k, v in whole.items()}
                           for i in range(0, n, config.calibration.batch_size)), config, name)


_PAD = {"attention_mask": 0, "labels": -100}


def _row_values(row: Any, i: int) -> dict[str, torch.Tensor]:
    if not isinstance(row, Mapping) or not row:
        raise CalibrationError(f"Calibration row {i} is a {type(row).__name__}; every row must be a mapping such "
                               "as {'input_ids': [...]} (a tokenized datasets row).")
    out = {}
    for key, value in row.items():
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value) if isinstance(value, (list, tuple)) \
            else None
        if t is None or t.dim() != 1:
            raise CalibrationError(f"Calibration row {i} has {key!r} of type {type(value).__name__}"
                                   f"{' with shape ' + str(tuple(t.shape)) if t is not None else ''}; a tokenized "
                                   "row holds 1-D lists or tensors of token ids.")
        out[key] = t
    return out


def stack_rows(rows: list[Any], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Tokenized rows (``[{"input_ids": 1-D ids, ...}, ...]``, e.g. a tokenized `datasets` row each) as one
    ``[rows, tokens]`` mapping, padded on the right to the longest row with an attention mask marking real tokens."""
    values = [_row_values(r, i) for i, r in enumerate(rows)]
    keys = set(values[0])
    for i, v in enumerate(values):
        if set(v) != keys:
            raise CalibrationError(f"Calibration row {i} has the keys {sorted(v)}, row 0 {sorted(keys)}; give every "
                                   "row the same keys.")
        if "input_ids" in v and "attention_mask" not in v:
            v["attention_mask"] = torch.ones_like(v["input_ids"])
        ids = v.get("input_ids")
        short = [k for k, x in v.items() if ids is not None and x.shape[0] != ids.shape[0]]
        if short:  # padding each key to the longest row would hide it (and miscount the tokens)
            raise CalibrationError(f"Calibration row {i} has {ids.shape[0]} input_ids but {short[0]} holds "
                                   f"{v[short[0]].shape[0]} values; every token-level key ({', '.join(sorted(v))}) "
                                   "must have one value per token. Tokenize the row's keys together.")
    length = max(t.shape[0] for v in values for t in v.values())
    if length == 0:
        raise CalibrationError("The calibration set is empty: every tokenized row has no tokens.")
    return {key: torch.stack([torch.nn.functional.pad(v[key], (0, length - v[key].shape[0]),
                                                      value=_PAD.get(key, pad_id)) for v in values])
            for key in values[0]}


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    return int(pad) if pad is not None else 0


def _is_rows(data: Any) -> bool:
    """A list of single tokenized rows (1-D values), as opposed to a list of batches (2-D tensors)."""
    if not isinstance(data, (list, tuple)) or not data or not isinstance(data[0], Mapping) or not data[0]:
        return False
    first = next(iter(data[0].values()))
    return (isinstance(first, torch.Tensor) and first.dim() == 1) or isinstance(first, (list, tuple))


def _packs_to_seq_len(data: Any, config: PruningConfig) -> bool:
    """Whether the sequences are built ``seq_len`` tokens long here (random ids, packed texts), so that limit
    can be checked before any tokenizing."""
    if config.calibration.source in ("random", "generated") or isinstance(data, str):
        return True
    if isinstance(data, (list, tuple)):
        return bool(data) and isinstance(data[0], str)
    return "text" in (getattr(data, "column_names", None) or []) and "input_ids" not in data.column_names


def prepare_calibration(data: Any, model: nn.Module, config: PruningConfig, tokenizer: Any = None,
                        example_inputs: Any = None) -> CalibrationSet:
    """Normalise ``data`` into batches (see the module docstring) and check every batch against the model
    (`checks.check_batches`); raise `CalibrationError` on bad input, before any forward pass."""
    config.validate()
    if _packs_to_seq_len(data, config):
        check_config_for_model(config, model)
    calib = _prepare(data, model, config, tokenizer, example_inputs)
    check_batches(calib.batches, model, tokenizer, example_inputs)
    return calib


def generated_calibration(model: nn.Module, config: PruningConfig, num_samples: int) -> CalibrationSet:
    """``num_samples`` sequences the model samples itself (`hfprune.calibration.generated`)."""
    ids = generated_token_ids(model, num_samples, resolved_seq_len(config, model), config.seed)
    return CalibrationSet(_ids_batches(ids, config), "generated", f"self-generated (from BOS, top-p {TOP_P})",
                          num_samples, ids.numel())


def _mixed(data: Any, model: nn.Module, config: PruningConfig, tokenizer: Any, example_inputs: Any
           ) -> CalibrationSet:
    """The data given, plus generated sequences for ``generated_share`` of ``num_samples``."""
    c = config.calibration
    if c.num_samples < 2:
        raise CalibrationError(f"calibration.source='mixed' splits num_samples={c.num_samples} between the data "
                               "given and generated text; use num_samples >= 2, or source 'data' / 'generated'.")
    k = min(c.num_samples - 1, max(1, int(round(c.generated_share * c.num_samples))))
    given = _prepare(data, model, dataclasses.replace(
        config, calibration=dataclasses.replace(c, num_samples=c.num_samples - k, source="data", generated_share=0.5)),
        tokenizer, example_inputs)
    gen = generated_calibration(model, config, k)
    # interleaved evenly, so any contiguous share of the batches (the target search holds out the last quarter)
    # holds both kinds in about the stated proportion
    keyed = [((i + 0.5) / len(given.batches), 0, b) for i, b in enumerate(given.batches)]
    keyed += [((i + 0.5) / len(gen.batches), 1, b) for i, b in enumerate(gen.batches)]
    batches = [b for _, _, b in sorted(keyed, key=lambda t: t[:2])]
    return CalibrationSet(batches, "mixed", f"{given.name or 'data'} + {gen.name}",
                          given.num_samples + k, given.tokens + gen.tokens, given.warnings, given.layout)


def _prepare(data: Any, model: nn.Module, config: PruningConfig, tokenizer: Any, example_inputs: Any
             ) -> CalibrationSet:
    if config.calibration.source == "random" or (isinstance(data, str) and data == "random"):
        return random_calibration(model, config, example_inputs)
    if config.calibration.source == "generated":
        if data is not None:
            raise CalibrationError("calibration.source='generated' makes its own calibration text, and calibration "
                                   "data were given too (they would be ignored); use source='mixed' to combine "
                                   "them, or pass no data.")
        return generated_calibration(model, config, config.calibration.num_samples)
    if config.calibration.source == "mixed":
        return _mixed(data, model, config, tokenizer, example_inputs)
    if data is None:
        raise CalibrationError("This criterion needs calibration data: pass calibration_data=texts, a Dataset, a "
                               "DataLoader, a tensor, or 'random' for data-agnostic inputs.")
    name = getattr(data, "_hfprune_name", None)
    if isinstance(data, str):
        raise CalibrationError(f"calibration_data={data!r} is a string; pass a list of texts, or 'random'.")
    if isinstance(data, torch.Tensor):
        return _from_tensor(data, model, config, name)
    try:
        import datasets
    except ImportError:  # pragma: no cover
        datasets = None
    if datasets is not None and isinstance(data, datasets.Dataset):
        name = name or (data.info.dataset_name if data.info else None)
        if len(data) == 0:
            raise CalibrationError("The calibration set is empty: the Dataset has no rows.")
        if "input_ids" in data.column_names:
            columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in data.column_names]
            rows = data.select(range(min(len(data), config.calibration.num_samples))).select_columns(columns)
            return _from_mapping(stack_rows(list(rows), _pad_id(tokenizer)), config, name)
        if "text" in data.column_names:
            return _pack_texts(list(data["text"]), tokenizer, config, name, model)
        raise CalibrationError(f"The Dataset needs a 'text' or 'input_ids' column; it has {data.column_names}.")
    if _is_rows(data):
        return _from_mapping(stack_rows(list(data[: config.calibration.num_samples]), _pad_id(tokenizer)), config, name)
    if isinstance(data, (list, tuple)) and (not data or isinstance(data[0], str)):
        return _pack_texts(list(data), tokenizer, config, name, model)
    if isinstance(data, Mapping):
        return _from_mapping(data, config, name)
    if isinstance(data, Iterable):
        return _from_iterable(data, config, name)
    raise CalibrationError(f"Unsupported calibration data of type {type(data).__name__}; pass texts, a Dataset, a "
                           "DataLoader, a tensor, or 'random'.")
