"""Assertions for the bad-input tests: folder digests, one-line CLI errors, forward-call counters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("hfprune: "), err
    assert "Traceback" not in "\n".join(err)
    for n in needles:
        assert n in err[-1], err[-1]
    return err[-1]


def forward_calls(model: torch.nn.Module) -> list[int]:
    """A counter of the model's forward calls: bad data must be refused before any."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls
