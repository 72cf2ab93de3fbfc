"""Tiny BERT classifier, synthetic data and a trainer factory shared by test_trainer.py and the torchrun script."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from hfprune import PruningConfig
from hfprune.trainer import PruningTrainer, RecoveryConfig


class Rows(Dataset):
    """Token ids whose label is whether token 7 occurs: learnable, deterministic."""

    def __init__(self, n: int, seed: int = 0, length: int = 12) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, length), generator=g)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def make_trainer(out: str, pruning: dict, max_steps: int = 6, batch: int = 8, callbacks: list | None = None,
                 n: int = 64, recovery: RecoveryConfig | None = None, **args) -> PruningTrainer:
    calibration = {"num_samples": 16, "batch_size": 4, **pruning.get("calibration", {})}
    config = PruningConfig(**{"criterion": "wanda", "granularity": "neurons", "sparsity": 0.5, **pruning,
                              "calibration": calibration})
    args = {"save_strategy": "no", **args}
    targs = TrainingArguments(output_dir=out, report_to=[], use_cpu=True, max_steps=max_steps,
                              per_device_train_batch_size=batch, learning_rate=1e-3, weight_decay=0.1,
                              logging_steps=1, seed=0, disable_tqdm=True, **args)
    return PruningTrainer(model=tiny_bert(), args=targs, train_dataset=Rows(n), pruning_config=config,
                          callbacks=callbacks, recovery=recovery)
