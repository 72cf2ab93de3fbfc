"""Output paths checked before any work; temporary siblings; nothing lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.helpers.models import tiny_model
from hfprune import OutputExistsError, PruningConfig, prune
from hfprune.cli import main
from hfprune.errors import OutputPathError
from hfprune.checkpoint.io import atomic_output_dir, check_output_dir
from tests.helpers.checks import digest, one_line


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


def test_disk_full_while_saving_from_python_is_the_same_error_as_on_the_command_line(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    result = prune(tiny_model("llama"), PruningConfig(criterion="magnitude"), progress=False)
    result.save_pretrained(tmp_path / "out")
    before = digest(tmp_path)

    def full(*args, **kwargs):  # what safetensors raises when the disk fills up: not an OSError
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')

    monkeypatch.setattr(type(result.model), "save_pretrained", full)
    with pytest.raises(OutputPathError, match="the disk is full"):
        result.save_pretrained(tmp_path / "out", overwrite=True)
    assert digest(tmp_path) == before  # the old folder intact, no temporary sibling left
