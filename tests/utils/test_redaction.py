"""Secrets: every token the process knows is scrubbed from messages and logs."""

from __future__ import annotations

import logging

import pytest

from hfprune import PublishError
from hfprune.cli import main




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
