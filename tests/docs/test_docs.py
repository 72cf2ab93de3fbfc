"""Docs that stay true: every ``hfprune.`` name in README.md and docs/ resolves, and the README quick start runs."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.helpers.models import save_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            if not hasattr(obj, p):
                return False
            obj = getattr(obj, p)
        return True
    return False


def test_every_dotted_name_in_the_docs_resolves():
    names = {}
    for doc in DOCS:
        for name in re.findall(r"\bhfprune(?:\.[A-Za-z_][A-Za-z0-9_]*)+", doc.read_text(encoding="utf-8")):
            names.setdefault(name.rstrip("."), set()).add(doc.name)
    assert len(names) > 20  # the docs do name the package's parts
    assert {n: sorted(f) for n, f in names.items() if not _resolves(n)} == {}


def test_every_source_path_in_the_docs_exists():
    paths = {}
    for doc in (d for d in DOCS if d.name != "changelog.md"):  # the changelog names files that moved, by design
        for path in re.findall(r"`((?:hfprune|tests|scripts|recipes)/[\w/.-]+\.(?:py|yaml|md))`", doc.read_text()):
            paths.setdefault(path, set()).add(doc.name)
    assert {p: sorted(f) for p, f in paths.items() if not (ROOT / p).exists()} == {}


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """The README's first Python block, as printed, on a tiny Llama saved with a word-level tokenizer in place of
    SmolLM2 (no Hub here); ``lee_texts`` is the packaged news text the block names."""
    pytest.importorskip("gensim")
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    model_id = re.search(r'from_pretrained\("([^"]+)"\)', code).group(1)
    folder = save_tiny_llama(tmp_path / "tiny", max_positions=1024)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code.replace(model_id, str(folder)), scope)
    result = scope["result"]
    assert result.report.params_after < result.report.params_before
    assert (tmp_path / "smollm2-pruned" / "pruning_config.json").exists()
    assert result.config.reconstruction.method == "weights" and result.config.protection.mode == "energy"
