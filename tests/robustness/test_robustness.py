"""Issue 14: every bad input and fault is met at the boundary with an hfprune error that names the problem, nothing
is lost, and no wrong result comes with exit code 0. One section per mechanism."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.models import tiny_model, word_texts
from hfprune import (CalibrationError, CheckpointError, ConfigError, OutputExistsError, PruningConfig, PublishError,
                     load_pruned, prune)
from hfprune.calibration.checks import check_config_for_model, check_units, check_weights
from hfprune.calibration.data import prepare_calibration
from hfprune.cli import main
from hfprune.errors import EvaluationError, OutputPathError
from hfprune.checkpoint.io import atomic_output_dir, check_output_dir


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


# --- 1. PruningConfig: typed validation, re-run by every entry point ---------------------------------------------
@pytest.mark.parametrize("kwargs, field, words", [
    ({"criterion": "elimination_compensation", "options": {"compensate": "no"}}, "options.compensate", "boolean"),
    ({"training": {"keep_masks": 1}}, "training.keep_masks", "boolean"),
    ({"training": {"regularizer": "group_lasso", "regularizer_weight": float("nan")}}, "training.regularizer_weight",
     "finite"),
    ({"sparsity": "0.5"}, "sparsity", "[0, 1)"),
    ({"calibration": {"seq_len": True}}, "calibration.seq_len", "integer"),
    ({"calibration": {"seq_len": 8.0}}, "calibration.seq_len", "integer"),
    ({"calibration": {"mode": "layerwise"}}, "calibration.mode", "one of 'full', 'sequential'"),
    ({"options": {"norm": True}}, "options.norm", "one of 1, 2"),
    ({"criterion": "relative_importance", "options": {"k": float("nan")}}, "options.k", "finite"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"ignore": "*embed*"}, "ignore", "list of glob patterns"),
    ({"head_sparsity": 0.25}, "head_sparsity", "has no effect"),
    ({"gqa_mode": "query_heads", "granularity": "neurons"}, "gqa_mode", "has no effect"),
    ({"training": {"end_step": 10}}, "training.end_step", "has no effect"),
    ({"criterion": "relative_importance", "options": {"tau": 2.0}}, "options.tau", "has no effect"),
    ({"width_depth": {"block_score": "skip_loss"}}, "width_depth.block_score", "has no effect"),
    ({"reconstruction": {"method": "none", "damp": 0.1}}, "reconstruction.damp", "has no effect"),
])
def test_config_field_types_ranges_and_contradictions(kwargs, field, words):
    with pytest.raises(ConfigError, match=f"PruningConfig.{field}=") as info:
        PruningConfig(**kwargs)
    assert words in str(info.value)


def test_every_field_has_a_real_rule():
    from dataclasses import fields
    from typing import get_type_hints

    from hfprune.config.checks import FIELD_RULES
    from hfprune.utils.rules import ANYTHING, rule_for_hint

    from hfprune.config.pruning_config import GROUPS

    # every top-level field but the groups (checked by their own class) and the criterion's options (by its Options)
    hints = get_type_hints(PruningConfig)
    for f in fields(PruningConfig):
        if f.name in GROUPS or f.name == "options":
            continue
        rule = FIELD_RULES.get(f.name) or rule_for_hint(hints[f.name])
        assert rule is not ANYTHING, f.name
        assert rule.ok(getattr(PruningConfig(), f.name)), f.name  # the default passes its own rule
    for name, group in GROUPS.items():
        group_hints = get_type_hints(group)
        for f in fields(group):
            rule = group.RULES.get(f.name) or rule_for_hint(group_hints[f.name])
            assert rule is not ANYTHING, f"{name}.{f.name}"
            assert rule.ok(getattr(group(), f.name)), f"{name}.{f.name}"


def test_config_changed_after_construction_is_checked_again():
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 8})
    config.sparsity = 1.5
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="sparsity=1.5"):
        prepare_calibration(torch.randint(0, 100, (2, 8)), model, config)
    config.sparsity, config.calibration.seq_len = 0.5, "no"
    with pytest.raises(ConfigError, match="calibration.seq_len='no'"):
        config.validate()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_huge_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as info:
        PruningConfig(criterion="x" * 5_000_000)
    assert len(str(info.value)) < 400 and "[5,000,002 chars]" in str(info.value)  # the repr, quotes included
    with pytest.raises(ConfigError) as info:
        PruningConfig.from_dict({"y" * 1_000_000: 1})
    assert len(str(info.value)) < 2000


@pytest.mark.parametrize("text, words", [
    ("sparsity: [0.5", "not valid YAML"),
    ("- a\n- b", "mapping"),
    ("missing-recipe.yaml", "does not exist"),
    ("sparsity: yes-please", "PruningConfig.sparsity="),
])
def test_from_yaml_errors(text, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words):
        PruningConfig.from_yaml(text)


def test_from_yaml_binary_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(ConfigError, match="not a text file"):
        PruningConfig.from_yaml(path)


def test_round_to_and_min_units_larger_than_a_layer():
    from hfprune.structure import find_groups

    model = tiny_model("bert")  # 64 FFN neurons, 4 heads per layer
    for name, value in (("round_to", 128), ("min_units", 65)):
        config = PruningConfig(criterion="magnitude", granularity="neurons", **{name: value})
        with pytest.raises(ConfigError, match=f"{name}={value} is larger than .* which has 64 neurons"):
            check_units(config, find_groups(model, config))
    config = PruningConfig(criterion="magnitude", granularity="heads", min_units=5)
    with pytest.raises(ConfigError, match="which has 4 heads"):
        check_units(config, find_groups(model, config))


def test_config_limits_that_depend_on_the_model():
    bert = tiny_model("bert")  # learned positions: 512
    with pytest.raises(ConfigError, match="seq_len=600 .* 512 positions"):
        check_config_for_model(PruningConfig(calibration={"seq_len": 600}), bert)
    check_config_for_model(PruningConfig(calibration={"seq_len": 4096}), tiny_model("llama"))  # rotary: no hard limit
    with torch.no_grad():
        next(bert.parameters())[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        check_weights(bert)


def test_prune_and_trainer_run_the_checks_at_their_start():
    """Through the engine: the config re-validated, unit counts and weights checked, before anything changes."""
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = PruningConfig(criterion="magnitude", granularity="neurons")
    config.sparsity = 1.5
    with pytest.raises(ConfigError, match="sparsity=1.5"):
        prune(model, config, progress=False)
    with pytest.raises(ConfigError, match="round_to=128 is larger"):
        prune(model, PruningConfig(criterion="magnitude", granularity="neurons", round_to=128), progress=False)
    with pytest.raises(ConfigError, match="512 positions"):
        prune(model, PruningConfig(criterion="wanda",
                                   calibration={"source": "random", "seq_len": 600, "num_samples": 2}), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trainer_refuses_a_model_with_nan_weights(tmp_path, monkeypatch):
    from tests.helpers import trainer as trainer_tiny

    real = trainer_tiny.tiny_bert

    def broken():
        model = real()
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
        return model

    monkeypatch.setattr(trainer_tiny, "tiny_bert", broken)
    with pytest.raises(ConfigError, match="NaN or inf"):
        trainer_tiny.make_trainer(str(tmp_path), {})


# --- 2. calibration (and evaluation) data checked against the model before any forward pass ----------------------
@pytest.mark.parametrize("family, data, words", [
    ("llama", torch.full((4, 12), 150), "outside the model's embedding of 100"),
    ("llama", torch.full((4, 12), -1), "outside the model's embedding"),
    ("llama", torch.randn(4, 12), "float tensor (images)"),
    ("llama", torch.zeros(4, 12, dtype=torch.bool), "dtype torch.bool"),
    ("vit", torch.randint(0, 100, (4, 12)), "takes images"),
    ("vit", torch.randn(4, 3, 32, 32), "32x32 pixels; the model takes 16x16"),
    ("vit", torch.randn(4, 1, 16, 16), "takes [images, 3, height, width]"),
    ("vit", torch.full((4, 3, 16, 16), float("nan")), "NaN or inf"),
    ("bert", torch.randint(0, 100, (2, 600)), "600 tokens, more than the 512 positions"),
    ("llama", [{"input_ids": torch.tensor([1, 2])}, {"labels": torch.tensor([1])}], "the same keys"),
    ("llama", [{"input_ids": torch.tensor([1, 2])}, {"input_ids": "abc"}], "row 1"),
])
def test_bad_calibration_data_is_refused_before_any_forward(family, data, words):
    model = tiny_model(family)
    calls = forward_calls(model)
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 4, "seq_len": 12, "batch_size": 2})
    with pytest.raises(CalibrationError) as info:
        prune(model, config, calibration_data=data, progress=False)
    assert words in str(info.value), str(info.value)
    assert calls[0] == 0


def test_other_batch_keys():
    from hfprune.calibration.checks import check_batch

    plain = torch.nn.Linear(3, 2)
    check_batch({"x": torch.randn(2, 3), "labels": torch.zeros(2)}, plain)  # a plain module's own argument names
    with pytest.raises(CalibrationError, match="calibration x hold NaN"):
        check_batch({"x": torch.full((2, 3), float("nan"))}, plain)
    with pytest.raises(CalibrationError, match="takes 'input_ids'"):
        check_batch({"foo": torch.randn(2, 3)}, tiny_model("bert"))


def test_tokenizer_larger_than_the_embedding_is_named():
    class BigTokenizer:
        eos_token_id, sep_token_id, pad_token_id = 0, None, 0

        def __len__(self) -> int:
            return 300

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [250 + (i % 40) for i in range(len(text.split()))]}

    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 8, "batch_size": 2})
    with pytest.raises(CalibrationError, match="tokenizer has 300 tokens"):
        prepare_calibration(word_texts(10), tiny_model("llama"), config, tokenizer=BigTokenizer())


def test_calibration_longer_than_the_positions():
    config = PruningConfig(criterion="wanda", calibration={"source": "random", "num_samples": 2, "seq_len": 600})
    with pytest.raises(ConfigError, match="seq_len=600 .* 512 positions"):  # before building any sequence
        prepare_calibration("random", tiny_model("bert"), config)
    with pytest.raises(CalibrationError, match="600 tokens, more than the 512 positions"):  # given as tensors
        prepare_calibration(torch.randint(0, 100, (2, 600)), tiny_model("bert"), PruningConfig(criterion="wanda"))


def test_tokenized_rows_are_padded_into_batches():
    torch.manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 100, (n,))} for n in (5, 9, 7, 9)]
    config = PruningConfig(criterion="wanda", granularity="neurons",
                           calibration={"num_samples": 4, "seq_len": 9, "batch_size": 2})
    calib = prepare_calibration(rows, tiny_model("llama"), config)
    first = calib.batches[0]
    assert first["input_ids"].shape == (2, 9) and first["attention_mask"].tolist()[0] == [1] * 5 + [0] * 4
    assert calib.num_samples == 4 and calib.tokens == 5 + 9 + 7 + 9
    lists = [{"input_ids": r["input_ids"].tolist()} for r in rows]  # a tokenized `datasets` row holds lists
    result = prune(tiny_model("llama"), config, calibration_data=lists, progress=False)
    assert result.report.params_after < result.report.params_before


def test_ragged_tokenized_dataset_is_padded():
    import datasets

    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]})
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 5, "batch_size": 2})
    calib = prepare_calibration(rows, tiny_model("llama"), config)
    assert calib.batches[0]["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]


# --- 3. checkpoint folders checked before loading --------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_dirs(tmp_path_factory, tiny_llama):  # noqa: F811
    """A uniform (loader 'transformers') and a non-uniform (loader 'hfprune') pruned tiny llama."""
    root = tmp_path_factory.mktemp("pruned")
    base = dict(criterion="magnitude", granularity="neurons", sparsity=0.5)
    for name, scope in (("uniform", "local"), ("nonuniform", "global")):
        assert main(["prune", str(tiny_llama), *sum((["--" + k.replace("_", "-"), str(v)] for k, v in base.items()),
                                                    []), "--scope", scope, "--output", str(root / name),
                     "--quiet"]) == 0
    return root


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


# --- 4. output paths checked before any work; stale temporaries removed -----------------------------------------------
def test_empty_or_working_directory_output_is_refused_and_nothing_is_lost(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("mine")
    monkeypatch.chdir(work)
    result = prune(tiny_model("bert"), PruningConfig(criterion="magnitude", granularity="neurons"), progress=False)
    before = digest(tmp_path)
    for path in ("", "   ", ".", str(work), str(tmp_path)):
        with pytest.raises(OutputPathError):
            result.save_pretrained(path, overwrite=True)
    assert digest(tmp_path) == before


def test_parent_that_is_a_file_and_not_enough_space(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "sub" / "out")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OutputPathError, match="Not enough disk space"):
        check_output_dir(tmp_path / "out", need_bytes=2 ** 62)


def test_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes into a chmod-ed folder: use a read-only mount
        if not os.path.isdir("/sys"):
            pytest.skip("root, and no read-only /sys to write into")
        ro = Path("/sys")
    try:
        with pytest.raises(OutputPathError, match="is not writable"):
            check_output_dir(ro / "out")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_disk_full_while_saving_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    before = digest(tmp_path)
    with pytest.raises(OutputPathError, match="the disk is full"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (Path(tmp) / "part.bin").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(tmp) / "part.bin"))
    assert digest(tmp_path) == before


def test_stale_temporary_siblings_are_removed_on_the_next_save(tmp_path):
    out = tmp_path / "out"
    dead, legacy, live = (tmp_path / f".out.tmp-{n}" for n in ("999999999-abc", "k3j2h1", f"{os.getpid()}-live"))
    for d in (dead, legacy, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 1000)
    with atomic_output_dir(out) as tmp:
        (Path(tmp) / "f").write_text("new")
    assert not dead.exists() and not legacy.exists() and live.exists()
    assert (out / "f").read_text() == "new"


def test_recipe_string_boolean_does_not_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f'model: {{name: example:mnist-mlp}}\npruning: {{criterion: magnitude}}\n'
                      f'output: {{dir: "{out}", overwrite: "no"}}\n')
    before = digest(tmp_path)
    assert main(["run", str(recipe), "--quiet"]) == 2
    one_line(capsys, "output.overwrite='no'", "boolean")
    assert digest(tmp_path) == before


def test_cli_empty_output_is_refused_before_work(tiny_llama, tmp_path, capsys, monkeypatch):  # noqa: F811
    import hfprune.cli.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["prune", str(tiny_llama), "--criterion", "magnitude", "--output", "", "--quiet"]) == 2
    one_line(capsys, "output.dir=''")


# --- 5. the CLI's one error boundary ---------------------------------------------------------------------
def test_unexpected_errors_are_reported_as_bugs(monkeypatch, capsys, tmp_path):
    import hfprune.cli.commands as commands

    def broken(args, console):
        raise ZeroDivisionError("x" * 100_000)

    monkeypatch.setattr(commands, "cmd_report", broken)
    assert main(["report", str(tmp_path)]) == 3
    line = one_line(capsys, "internal error", "ZeroDivisionError", "--debug")
    assert len(line) < 3000
    with pytest.raises(ZeroDivisionError):
        main(["report", str(tmp_path), "--debug"])


@pytest.mark.parametrize("content, code, words", [
    (b"\xff\xfe\x00\x81binary", 2, "not a text file"),
    (b"model: {name: 123}\n", 2, "model.name=123"),
    (b"model: {name: example:minilm}\noutput: {dir: [a, b]}\n", 2, "output.dir=['a', 'b']"),
    (b"model: {name: example:minilm}\nevaluation: {max_samples: 0}\n", 2, "evaluation.max_samples=0"),
    (b"model: {name: example:minilm}\npruning: {sparsity: .nan}\n", 2, "PruningConfig.sparsity=nan"),
    (b"model: [unclosed\n", 2, "not valid YAML"),
])
def test_bad_recipes_are_one_line(tmp_path, capsys, content, code, words):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    assert main(["run", str(path), "--quiet"]) == code
    one_line(capsys, words)


@pytest.mark.parametrize("name, content, words", [
    ("calib.txt", b"\xff\xfe\x81\x00 not text", "not a UTF-8 text file"),
    ("calib.jsonl", b'{"text": "a"}\n{"text": \n', "is not a readable JSONL file"),
])
def test_bad_data_files_are_one_line(tiny_llama, tmp_path, capsys, name, content, words):  # noqa: F811
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["prune", str(tiny_llama), "--criterion", "wanda", "--calibration-data", str(path), "--output",
                 str(tmp_path / "o"), "--quiet"]) == 1
    one_line(capsys, words)
    assert not (tmp_path / "o").exists()


def test_interrupt_exit_code(monkeypatch, capsys, tmp_path):
    import hfprune.cli.commands as commands

    def interrupted(args, console):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_report", interrupted)
    assert main(["report", str(tmp_path)]) == 130
    one_line(capsys, "interrupted")


# --- 6. secrets: every token the process knows is scrubbed ------------------------------------------------
SECRET = "plainSecretWithoutPrefix42"


def test_scrub_knows_env_and_token_files(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from hfprune.utils.redact import scrub

    monkeypatch.setenv("HF_TOKEN", SECRET)
    file_token, stored = "fileTokenNoPrefix77", "storedTokenNoPrefix88"
    (tmp_path / "token").write_text(file_token + "\n")
    (tmp_path / "stored_tokens").write_text(f"[work]\nhf_token = {stored}\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    text = scrub(f"Bearer {SECRET} / {file_token} / {stored} / hf_abcdefghijkl / arg-secret-1", "arg-secret-1")
    assert text == "Bearer *** / *** / *** / hf_*** / ***"


def test_push_failure_echoing_an_env_token_is_scrubbed(hub, tmp_path, monkeypatch):
    from tests.helpers import hub_server
    from tests.helpers.publish import write_pruned_folder
    from hfprune.publishing import push_to_hub

    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub.token = SECRET

    def echo(self, repo_id, revision, body, query):
        self._error(400, f"refused request with Authorization: {self.headers.get('Authorization')}")

    monkeypatch.setattr(hub_server._Handler, "_commit", echo)
    folder = write_pruned_folder(tmp_path / "p", "unstructured")
    with pytest.raises(PublishError) as info:
        push_to_hub(folder, "me/model", endpoint=hub.url)
    assert "HTTP 400" in str(info.value) and SECRET not in str(info.value) and "***" in str(info.value)


def test_cli_scrubs_messages_and_logs(monkeypatch, capsys, tmp_path):
    import io

    import hfprune.cli.commands as commands

    monkeypatch.setenv("HF_TOKEN", SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)

    def leaky(args, console):
        logging.getLogger("huggingface_hub").warning("retrying with token %s", SECRET)
        print(f"progress {SECRET}")
        raise PublishError(f"server said: token {SECRET} refused")

    monkeypatch.setattr(commands, "cmd_report", leaky)
    try:
        assert main(["report", str(tmp_path)]) == 1
    finally:
        logging.getLogger().removeHandler(handler)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + stream.getvalue()
    assert "token *** refused" in captured.err and "retrying with token ***" in stream.getvalue()


# --- 7. evaluation refuses empty data ----------------------------------------------------------------------
def test_perplexity_and_accuracy_refuse_empty_data():
    from hfprune.evaluation.perplexity import perplexity
    from hfprune.evaluation.quality import text_accuracy

    class WordTokenizer:
        def __call__(self, text, add_special_tokens=False, **kw):
            return {"input_ids": [3 + len(w) for w in text.split()]}

    model = tiny_model("llama")
    for texts in ([], ["one"], ["", " "]):
        with pytest.raises(EvaluationError, match="at least two tokens"):
            perplexity(model, WordTokenizer(), texts)
    value = perplexity(model, WordTokenizer(), ["two words and more"])
    assert math.isfinite(value) and value > 1.0
    with pytest.raises(EvaluationError, match="0 text"):
        text_accuracy(tiny_model("bert"), WordTokenizer(), [], [])
    with pytest.raises(EvaluationError, match="not a class index"):
        text_accuracy(tiny_model("bert"), WordTokenizer(), ["a b"], [7])


def test_cli_evaluate_on_empty_data(pruned_dirs, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("cat\n")
    assert main(["evaluate", str(pruned_dirs / "uniform"), "--data", str(short), "--quiet"]) == 1
    one_line(capsys, "at least two tokens")
    with pytest.raises(SystemExit):
        from hfprune.cli.parser import build_parser

        build_parser().parse_args(["evaluate", str(pruned_dirs / "uniform"), "--max-samples", "0"])
    assert main(["evaluate", str(pruned_dirs / "uniform"), "--max-samples", "0"]) == 2
    capsys.readouterr()
