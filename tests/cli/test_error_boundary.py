"""The CLI's one error boundary: one-line errors and exit codes."""

from __future__ import annotations


import pytest

from hfprune.cli import main
from tests.helpers.checks import one_line


def test_unexpected_errors_are_reported_as_bugs(monkeypatch, capsys, tmp_path):
    import hfprune.cli.commands as commands

    def broken(args, console):
        raise ZeroDivisionError("x" * 100_000)

    monkeypatch.setattr(commands, "cmd_report", broken)
    assert main(["report", str(tmp_path)]) == 3
    line = one_line(capsys, "internal error", "ZeroDivisionError", "--debug")
    assert len(line) < 3000
    assert main(["report", str(tmp_path), "--debug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err


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


def test_a_huge_value_is_shortened_inside_any_message(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: " + "m" * 5_000_000 + "}\npruning: {criterion: magnitude}\n")
    assert main(["run", str(recipe), "--quiet"]) != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("hfprune: error") and len(line) < 600 and "chars]" in line  # was 2,008 characters
