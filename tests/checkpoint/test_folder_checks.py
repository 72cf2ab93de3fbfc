"""Checkpoint folders checked before loading, with the damaged file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hfprune import CheckpointError, load_pruned
from hfprune.cli import main
from tests.helpers.checks import one_line


@pytest.fixture
def folder(pruned_dirs, tmp_path, request):
    kind = getattr(request, "param", "uniform")
    return Path(shutil.copytree(pruned_dirs / kind, tmp_path / kind))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("folder, damage, words", [
    ("uniform", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
     "model.safetensors is truncated or corrupt"),
    ("uniform", lambda f: (f / "config.json").write_text("{nope"), "config.json is not valid JSON"),
    ("uniform", lambda f: _edit_json(f / "config.json", lambda d: d.pop("model_type")), "no 'model_type'"),
    ("uniform", lambda f: _edit_json(f / "config.json", lambda d: d.update(intermediate_size=64)),
     "config.json implies"),
    ("uniform", lambda f: _edit_json(f / "pruning_config.json", lambda d: d.update(auto_class="AutoTokenizer")),
     "'AutoTokenizer' (from pruning_config.json) is not a transformers model class"),
    ("uniform", lambda f: _edit_json(f / "pruning_config.json", lambda d: d.update(loader="magic")),
     "names the loader 'magic'"),
    ("nonuniform", lambda f: _edit_json(f / "pruning_config.json", lambda d: next(iter(d["groups"].values()))
                                        .update(kept=3)), "keeping 3 neurons, but the weights hold"),
    ("nonuniform", lambda f: _edit_json(f / "pruning_config.json", lambda d: d["pruning_config"]
                                        .update(sparsity="half")), "invalid pruning config"),
    ("uniform", lambda f: (f / "model.safetensors").unlink(), "has no weights"),
], indirect=["folder"])
def test_damaged_folders_are_refused_with_the_file_named(folder, damage, words):
    damage(folder)
    with pytest.raises(CheckpointError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_pruned(folder)


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("went to the Hub"))
    for path in (str(tmp_path / "nope"), "./nope/model", "~/surely-not-here/x"):
        with pytest.raises(CheckpointError, match="does not exist"):
            load_pruned(path)
    with pytest.raises(CheckpointError, match="is empty"):
        load_pruned("")


def test_pickled_weights_need_allow_pickle(folder):
    from safetensors.torch import load_file

    reference = load_pruned(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_pruned(folder)
    loaded = load_pruned(folder, allow_pickle=True)
    x = torch.randint(0, 20, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, reference(x).logits)


def test_cli_on_damaged_folders(folder, capsys):
    (folder / "pruning_report.json").write_text("{corrupt")
    assert main(["report", str(folder)]) == 1
    one_line(capsys, "pruning_report.json is corrupt")
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    assert main(["evaluate", str(folder), "--quiet"]) == 1
    one_line(capsys, "model.safetensors is truncated or corrupt")


def test_cli_prune_of_a_pickle_only_model_folder(tiny_llama, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file

    model = Path(shutil.copytree(tiny_llama, tmp_path / "m"))
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    args = ["prune", str(model), "--criterion", "magnitude", "--output", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 1
    one_line(capsys, "--allow-pickle")
    assert not (tmp_path / "o").exists()
    assert main([*args, "--allow-pickle"]) == 0
