"""The command line, in-process through `main(argv)` (exit codes, one-line errors) and once as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hfprune.cli import main
from hfprune.cli.recipe import load_recipe
from tests.helpers.hub_server import HUB_TOKEN as TOKEN  # the `hub` fixture lives in conftest.py
from tests.helpers.models import word_texts

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
@pytest.fixture()
def texts_file(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(word_texts(40)), encoding="utf-8")
    return path


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    last = err[-1]
    assert last.startswith("hfprune: error:") and "Traceback" not in "\n".join(err)
    for n in needles:
        assert n in last, last
    return last


# --- recipes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    recipe = load_recipe(path)
    assert recipe.pruning.criterion == data["pruning"]["criterion"]
    assert recipe.output.dir and "MEASURE" not in path.read_text()


def test_all_recipes_present() -> None:
    names = {p.stem for p in RECIPES}
    assert {"smollm2-wanda-baseline", "smollm2-ec-unstructured-50", "smollm2-hybrid-ffn-30",
            "minilm-expressiveness-data-agnostic", "minilm-polarity-prune-finetune", "mnist-mlp-ec",
            "mnist-mlp-relative-importance", "cnn-digits-hybrid"} <= names


def _write_recipe(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_digits_recipe_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    recipe = _write_recipe(tmp_path, {
        "model": {"name": "example:digits-cnn", "train_epochs": 1},
        "pruning": {"criterion": "magnitude", "granularity": "channels", "sparsity": 0.5, "calibration": {"num_samples": 64}},
        "calibration": {"data": "example:digits"},
        "evaluation": {},
        "output": {"dir": str(out)},
    })
    assert main(["run", str(recipe), "--quiet"]) == 0
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["params_after"] < report["params_before"]
    assert 0.0 <= report["evaluation"]["accuracy"]["after"] <= 1.0
    assert (out / "model.safetensors").is_file() and (out / "pruning_config.json").is_file()
    assert "accuracy:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-mlp-ec", "mnist-mlp-relative-importance", "cnn-digits-hybrid"])
def test_small_recipe_runs(name: str, tmp_path: Path) -> None:
    path = ROOT / "recipes" / f"{name}.yaml"
    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    acc = json.loads((tmp_path / "out" / "pruning_report.json").read_text())["evaluation"]["accuracy"]
    assert acc["before"] > 0.7 and acc["after"] > 0.5


@pytest.mark.slow
def test_training_recipe_saves_the_trainers_report_with_the_cli_numbers(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    recipe = _write_recipe(tmp_path, {
        "model": {"name": "example:minilm", "task": "sequence-classification"},
        "pruning": {"criterion": "wanda", "granularity": "neurons", "sparsity": 0.3, "calibration": {"num_samples": 8, "seq_len": 32}},
        "calibration": {"data": "example:polarity"},
        "training": {"dataset": "example:polarity", "eval_fraction": 0.2, "max_length": 32, "max_steps": 2,
                     "per_device_train_batch_size": 8},
        "evaluation": {},
        "output": {"dir": str(out)},
    })
    assert main(["run", str(recipe), "--quiet"]) == 0
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["command"] and "run" in report["command"]
    assert set(report["evaluation"]["accuracy"]) == {"before", "after"} and report["layers"]
    assert "## Evaluation" in (out / "README.md").read_text()
    assert main(["report", str(out)]) == 0
    assert "accuracy:" in capsys.readouterr().out


# --- prune / report / evaluate round trip ------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["weights", "neurons"])
def test_prune_report_evaluate_round_trip(tiny_llama: Path, texts_file: Path, tmp_path: Path, granularity: str,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pruned"
    rc = main(["prune", str(tiny_llama), "--criterion", "wanda", "--granularity", granularity, "--sparsity", "0.5",
               "--calibration-data", str(texts_file), "--calibration.num-samples", "4", "--calibration.seq-len", "16", "--output", str(out),
               "--evaluate", "--eval-data", str(texts_file), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "criterion wanda" in printed and "perplexity:" in printed
    saved = json.loads((out / "pruning_config.json").read_text())
    assert saved["pruning_config"]["sparsity"] == 0.5 and saved["auto_class"] == "AutoModelForCausalLM"
    if granularity == "neurons":
        assert json.loads((out / "config.json").read_text())["intermediate_size"] == 32

    assert main(["report", str(out)]) == 0
    assert "criterion wanda, granularity " + granularity in capsys.readouterr().out

    assert main(["evaluate", str(out), "--data", str(texts_file), "--quiet"]) == 0
    ppl = float(capsys.readouterr().out.strip().split(": ")[1])
    assert ppl > 1 and ppl == pytest.approx(
        json.loads((out / "pruning_report.json").read_text())["evaluation"]["perplexity"]["after"], rel=1e-4)


def test_magnitude_needs_no_calibration_data(tiny_llama: Path, tmp_path: Path) -> None:
    assert main(["prune", str(tiny_llama), "--criterion", "magnitude", "--sparsity", "0.3", "--output",
                 str(tmp_path / "o"), "--quiet"]) == 0


def test_data_criterion_without_data_is_a_usage_error(tiny_llama: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["prune", str(tiny_llama), "--criterion", "wanda", "--output", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "--calibration-data", "'random'")
    assert not (tmp_path / "o").exists()


def test_csv_calibration_with_text_column(tiny_llama: Path, tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("id,body\n" + "\n".join(f"{i},{t}" for i, t in enumerate(word_texts(30))))
    assert main(["prune", str(tiny_llama), "--criterion", "wanda", "--calibration-data", str(csv), "--text-column",
                 "body", "--calibration.num-samples", "4", "--calibration.seq-len", "16", "--output", str(tmp_path / "o"), "--quiet"]) == 0
    assert main(["prune", str(tiny_llama), "--criterion", "wanda", "--calibration-data", str(csv),
                 "--output", str(tmp_path / "o2"), "--quiet"]) == 2


# --- bad input ---------------------------------------------------------------------------------------------------
def test_unknown_option(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["prune", "m", "--output", str(tmp_path / "o"), "--sparsty", "0.3"]) == 2
    _one_line_error(capsys, "--sparsty")


def test_bad_option_value(capsys: pytest.CaptureFixture, tiny_llama: Path, tmp_path: Path) -> None:
    assert main(["prune", str(tiny_llama), "--sparsity", "1.5", "--output", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "sparsity", "[0, 1)")


@pytest.mark.parametrize("section,key,suggestion", [("pruning", "sparsty", "sparsity"),
                                                    ("calibration", "text_colum", "text_column"),
                                                    (None, "evalution", "evaluation")])
def test_unknown_recipe_key(tmp_path: Path, capsys: pytest.CaptureFixture, section: str | None, key: str,
                            suggestion: str) -> None:
    data: dict = {"model": {"name": "example:digits-cnn"}, "pruning": {"criterion": "magnitude"},
                  "calibration": {}, "output": {"dir": str(tmp_path / "o")}}
    if section:
        data[section][key] = 1
    else:
        data[key] = {}
    assert main(["run", str(_write_recipe(tmp_path, data))]) == 2
    _one_line_error(capsys, repr(key), f"Did you mean {suggestion!r}?")
    assert not (tmp_path / "o").exists()


def test_unknown_training_argument(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = {"model": {"name": "example:minilm"}, "pruning": {},
            "training": {"dataset": "example:polarity", "num_train_epoch": 1}}
    assert main(["run", str(_write_recipe(tmp_path, data))]) == 2
    _one_line_error(capsys, "'num_train_epoch'", "num_train_epochs")


def test_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prune", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "does not exist")
    assert not (tmp_path / "o").exists()


def test_hub_id_offline_says_pass_a_local_folder(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["prune", "someone/not-cached-model", "--output", str(tmp_path / "o"), "--quiet"]) == 1
    _one_line_error(capsys, "someone/not-cached-model", "local folder")
    assert not (tmp_path / "o").exists()


def test_calibration_file_missing(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prune", str(tiny_llama), "--criterion", "wanda", "--calibration-data", str(tmp_path / "no.txt"),
                 "--output", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "does not exist")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_calibration_file_empty(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                content: str) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    assert main(["prune", str(tiny_llama), "--criterion", "wanda", "--calibration-data", str(empty),
                 "--output", str(tmp_path / "o"), "--quiet"]) == 1
    _one_line_error(capsys, "empty")
    assert not (tmp_path / "o").exists()


def test_output_exists(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", str(tiny_llama), "--criterion", "magnitude", "--output", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "--overwrite")
    assert [p.name for p in tmp_path.iterdir()] == ["o"] and os.listdir(out) == ["keep.txt"]


def test_debug_shows_a_scrubbed_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from hfprune.cli import commands
    from hfprune.errors import PublishError

    def leaky(args, console):
        raise PublishError(f"the server echoed the token {TOKEN}")

    monkeypatch.setattr(commands, "cmd_report", leaky)
    assert main(["report", str(tmp_path), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "PublishError" in err and "leaky" in err
    assert TOKEN not in err and err.strip().splitlines()[-1].startswith("hfprune: error:")
    assert main(["prune", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--debug"]) == 2


def test_report_of_a_folder_not_saved_by_hfprune(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 1
    _one_line_error(capsys, "pruning_config.json")


def test_push_without_publishing_or_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["push", str(tmp_path / "nope"), "me/model"]) == 2
    _one_line_error(capsys, "does not exist")


# --- push to a loopback Hub ----------------------------------------------------------------------------------------


def test_push_round_trip(hub, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_llama), "--criterion", "magnitude", "--granularity", "neurons", "--sparsity",
                 "0.5", "--output", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["push", str(out), "tester/tiny-pruned", "--token", TOKEN, "--quiet"]) == 0
    assert "tester/tiny-pruned" in capsys.readouterr().out
    files = hub.files("tester/tiny-pruned")
    assert {"model.safetensors", "pruning_config.json", "pruning_report.json", "README.md"} <= set(files)
    assert files["pruning_config.json"] == (out / "pruning_config.json").read_bytes()
    assert main(["push", str(out), "not a repo id", "--token", TOKEN]) == 1
    _one_line_error(capsys)


def test_bad_push_repo_id_fails_before_any_work(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_llama), "--criterion", "magnitude", "--granularity", "neurons", "--sparsity",
                 "0.5", "--output", str(out), "--push-to-hub", "not a repo id", "--quiet"]) == 1
    _one_line_error(capsys, "not a Hub model id")
    assert not out.exists()


def test_report_with_only_an_after_evaluation() -> None:
    from hfprune.cli.commands import format_report
    from hfprune.report.pruning_report import PruningReport

    report = PruningReport(None, "bert", "wanda", "neurons", 0.5, "local", 10, 5, 5, 100, 50, [1, 8], "transformers",
                           evaluation={"eval_loss": {"after": 0.25}, "accuracy": {"before": 0.9, "after": 0.8}})
    text = format_report(report)
    assert "eval_loss: 0.2500 after pruning" in text and "accuracy: 0.9000 before -> 0.8000 after pruning" in text


# --- the installed entry point and python -m ---------------------------------------------------------------------
def test_entry_point_subprocess(tmp_path: Path) -> None:
    exe = shutil.which("hfprune")
    cmd = [exe] if exe else [sys.executable, "-m", "hfprune"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([*cmd, "report", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 1 and ok.stderr.strip().startswith("hfprune: error:")
    assert "Traceback" not in ok.stderr


def test_python_dash_m(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import runpy

    monkeypatch.setattr(sys, "argv", ["hfprune", "nosuchcommand"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("hfprune", run_name="__main__")
    assert exit_info.value.code == 2 and "nosuchcommand" in capsys.readouterr().err


def test_prune_help_lists_the_configs_choices_and_refuses_others(capsys):
    """Choices are declared once (the config's rules) and shared by validation and argparse."""
    from hfprune.cli import main

    assert main(["prune", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--scope {local,global}" in out and "--reconstruction.method {auto,none,weights}" in out
    assert main(["prune", "model", "--scope", "everywhere", "--output", "out"]) == 2
    assert "invalid choice: 'everywhere'" in capsys.readouterr().err
