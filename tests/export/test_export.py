"""Exports of non-uniform pruned folders (hfprune.export): `padded` reloads with plain transformers in a fresh
interpreter and equals `load_pruned`; `nemotron-nas` states every block's widths as its stored weights have them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import hfprune
from hfprune import ConfigError, PruningConfig
from hfprune.export.nemotron_nas import ffn_width
from tests.helpers.models import tiny_model

IDS = [[1, 5, 9, 20, 33, 47, 60, 2], [3, 3, 70, 11, 90, 4, 8, 15]]

PLAIN_RELOAD = """
import sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
assert "hfprune" not in sys.modules
with torch.no_grad():
    torch.save(model(torch.tensor({ids})).logits, sys.argv[2])
"""


def nonuniform(tmp_path: Path, family: str, granularity: str = "neurons+heads") -> Path:
    """A global-ranking prune: every block keeps its own FFN width (and KV groups)."""
    config = PruningConfig(criterion="magnitude", granularity=granularity, sparsity=0.5, scope="global",
                           head_sparsity=1 / 3 if "heads" in granularity else None)
    res = hfprune.prune(tiny_model(family), config, progress=False)
    folder = tmp_path / f"{family}-pruned"
    res.save_pretrained(folder)
    assert json.loads((folder / "pruning_config.json").read_text())["loader"] == "hfprune"
    return folder


def stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_padded_export_reloads_without_hfprune_and_equals_load_pruned(tmp_path, family):
    src = nonuniform(tmp_path, family)
    widths = {s[0] for k, s in stored_shapes(src).items() if k.endswith("mlp.gate_proj.weight")}
    assert len(widths) > 1  # really non-uniform
    out = hfprune.export(src, tmp_path / "padded", format="padded")
    logits = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", PLAIN_RELOAD.format(ids=IDS), out, str(logits)], check=True)
    with torch.no_grad():
        expected = hfprune.load_pruned(src)(torch.tensor(IDS)).logits
    assert torch.allclose(torch.load(logits, weights_only=True), expected, atol=1e-5)
    info = json.loads((Path(out) / "hfprune_export.json").read_text())
    assert info["widths"]["after"]["neurons"] == max(widths)
    assert info["params_exported"] > info["params_pruned"]
    assert "no size or speed win past the widest layer" in (Path(out) / "README.md").read_text()


def test_nemotron_nas_block_configs_match_the_stored_weights(tmp_path):
    src = nonuniform(tmp_path, "llama", granularity="neurons")
    out = Path(hfprune.export(src, tmp_path / "nas", format="nemotron-nas"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "nemotron-nas" and cfg["architectures"] == ["DeciLMForCausalLM"]
    shapes = stored_shapes(out)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    assert len(cfg["block_configs"]) == cfg["num_hidden_layers"]
    for i, block in enumerate(cfg["block_configs"]):
        width = ffn_width(block["ffn"]["ffn_mult"], hidden)
        assert width % 256 == 0
        assert shapes[f"model.layers.{i}.mlp.gate_proj.weight"] == (width, hidden)
        assert shapes[f"model.layers.{i}.mlp.down_proj.weight"] == (hidden, width)
        kv = heads // block["attention"]["n_heads_in_group"]
        assert shapes[f"model.layers.{i}.self_attn.k_proj.weight"] == (kv * head_dim, hidden)
        assert shapes[f"model.layers.{i}.self_attn.q_proj.weight"] == (heads * head_dim, hidden)
        assert not block["attention"]["no_op"] and not block["ffn"]["no_op"]


def test_exports_refuse_what_they_cannot_express(tmp_path):
    src = nonuniform(tmp_path, "llama")  # KV groups removed: query heads differ per block
    with pytest.raises(ConfigError, match="query heads"):
        hfprune.export(src, tmp_path / "nas", format="nemotron-nas")
    with pytest.raises(ConfigError, match="format='padded' first"):
        hfprune.export(src, tmp_path / "q", format="quanto-int4")
    with pytest.raises(ConfigError, match="Llama variant"):
        hfprune.export(nonuniform(tmp_path, "qwen2", "neurons"), tmp_path / "nas", format="nemotron-nas")
    res = hfprune.prune(tiny_model("llama"), PruningConfig(criterion="magnitude", granularity="neurons"),
                        progress=False)
    res.save_pretrained(tmp_path / "uniform")
    with pytest.raises(ConfigError, match="nothing to export"):
        hfprune.export(tmp_path / "uniform", tmp_path / "out")
    with pytest.raises(ConfigError, match="not one of padded, nemotron-nas"):
        hfprune.export(src, tmp_path / "out", format="gguf")
    assert not any((tmp_path / n).exists() for n in ("nas", "out", "q"))


def test_export_command_line(tmp_path):
    src = nonuniform(tmp_path, "mistral")
    run = subprocess.run([sys.executable, "-m", "hfprune", "export", str(src), str(tmp_path / "p"), "--format",
                          "padded"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "p" / "model.safetensors").is_file()
