"""Builders of saved pruned-checkpoint folders for the publishing tests.

They write exactly the saved-folder contract of `PruningResult.save_pretrained` (weights, ``pruning_config.json``
with its extra keys, ``pruning_report.json``, then the card), so the publishing code is tested without the core
engine. Tiny random BERT models built from configs keep every test fast.
"""

from __future__ import annotations

import hashlib
import os

import torch
from transformers import BertConfig, BertForSequenceClassification

from hfprune.config.pruning_config import PruningConfig
from hfprune.checkpoint.io import atomic_output_dir
from hfprune.publishing import write_model_card
from hfprune.report.pruning_report import LayerReport, PruningReport

BASE_MODEL = "google-bert/bert-base-uncased"
AUTO_CLASS = "AutoModelForSequenceClassification"
INTERMEDIATE = 64
HEADS = 4
LAYERS = 2

KINDS = ("unstructured", "structured_uniform", "structured_nonuniform")


def tiny_bert(intermediate_size: int = INTERMEDIATE, seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer BERT classifier with random weights (seeded, so two calls give the same model)."""
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=intermediate_size, vocab_size=100, max_position_embeddings=64,
                        num_labels=2)
    return BertForSequenceClassification(config).eval()


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _nonzero(model: torch.nn.Module) -> int:
    return int(sum((p != 0).sum() for p in model.parameters()))


def _spec(kind: str) -> tuple[PruningConfig, list[LayerReport], int]:
    """The config, per-layer kept units and compacted FFN width of one fixture kind."""
    if kind == "unstructured":
        cfg = PruningConfig(criterion="magnitude", granularity="weights", sparsity=0.5, options={"norm": 2})
        layers = [LayerReport(f"bert.encoder.layer.{i}.{m}", "weights", 32 * INTERMEDIATE, 16 * INTERMEDIATE)
                  for i in range(LAYERS) for m in ("intermediate.dense", "output.dense")]
        return cfg, layers, INTERMEDIATE
    if kind == "structured_uniform":
        cfg = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.25,
                            calibration={"source": "random", "num_samples": 8, "seq_len": 16})
        layers = [LayerReport(f"bert.encoder.layer.{i}.mlp", "neurons", INTERMEDIATE, 48) for i in range(LAYERS)]
        return cfg, layers, 48
    if kind == "structured_nonuniform":
        cfg = PruningConfig(criterion="taylor", granularity="neurons+heads", sparsity=0.5, scope="global",
                            training={"schedule": "iterative", "pruning_steps": 3, "end_step": 300})
        layers = [LayerReport("bert.encoder.layer.0.mlp", "neurons", INTERMEDIATE, 40),
                  LayerReport("bert.encoder.layer.1.mlp", "neurons", INTERMEDIATE, 1, forced_min=True),
                  LayerReport("bert.encoder.layer.0.attention", "heads", HEADS, 3),
                  LayerReport("bert.encoder.layer.1.attention", "heads", HEADS, 2)]
        return cfg, layers, INTERMEDIATE
    raise ValueError(f"unknown fixture kind {kind!r}; one of {KINDS}")


def make_report(kind: str, model_before: torch.nn.Module, model_after: torch.nn.Module) -> PruningReport:
    """A report whose numbers are all distinct, so a test can find each one in the card."""
    cfg, layers, _ = _spec(kind)
    c = cfg.calibration
    calibration = ({"source": "random", "num_samples": c.num_samples, "seq_len": c.seq_len,
                    "tokens": c.num_samples * c.seq_len} if c.source == "random" else
                   {"source": "data", "name": "gensim lee_background.cor", "num_samples": 64, "seq_len": 128,
                    "tokens": 8192})
    return PruningReport(
        base_model=BASE_MODEL, model_type="bert", criterion=cfg.criterion, granularity=cfg.granularity,
        sparsity=cfg.sparsity, scope=cfg.scope,
        params_before=_n_params(model_before), params_after=_n_params(model_after),
        nonzero_after=_nonzero(model_after) - (2048 if kind == "unstructured" else 0),
        macs_before=1_234_567, macs_after=987_654 if kind != "unstructured" else 1_234_567,
        macs_input_shape=[1, 16],
        loader="hfprune" if kind == "structured_nonuniform" else "transformers",
        layers=layers, timings={"calibration": 1.25, "scoring": 0.5, "compaction": 0.125},
        calibration=calibration,
        warnings=["bert.encoder.layer.1.mlp kept min_units=1 neurons"] if kind == "structured_nonuniform" else [],
        evaluation={"accuracy": {"before": 0.9123, "after": 0.8765}, "f1": {"before": 0.8811, "after": 0.8422}},
        latency={"dense_ms": 12.5, "pruned_ms": 7.75, "input_shape": [1, 16], "device": "cpu"}
        if kind != "unstructured" else {},
        command=f"hfprune prune {BASE_MODEL} --criterion {cfg.criterion} --granularity {cfg.granularity} "
                f"--sparsity {cfg.sparsity} --output pruned",
    )


def write_pruned_folder(path: str | os.PathLike, kind: str, overwrite: bool = False,
                        extra: dict | None = None) -> str:
    """Write a complete saved folder of one ``kind`` at ``path`` the way the core's ``save_pretrained`` does."""
    cfg, layers, width = _spec(kind)
    before = tiny_bert()
    after = tiny_bert(width, seed=1)
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        after.save_pretrained(tmp)
        groups = {lr.name: {"kind": lr.kind, "total": lr.total, "kept": lr.kept} for lr in layers}
        report = make_report(kind, before, after)
        cfg.save_pretrained(tmp, extra={"base_model": BASE_MODEL, "loader": report.loader,
                                        "auto_class": AUTO_CLASS, "groups": groups, **(extra or {})})
        report.save(tmp)
        write_model_card(tmp)
    return os.path.abspath(path)


def folder_digest(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``path`` by relative name: equal digests mean an untouched folder."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out
