"""Push a pruned checkpoint (a result object or a saved folder) to the Hugging Face Hub.

Everything that can be checked locally is checked before the first request, so a typo costs no network call;
network failures become one-line `PublishError`s naming the step and the fix, scrubbed of the token. The local
folder is only read: after any failure it is exactly as it was.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..checkpoint.loading import check_checkpoint
from ..config.pruning_config import read_pruning_file
from ..errors import CheckpointError, PublishError, shown
from ..structure.loaders import Loader
from ..utils.redact import register_secret, scrub, scrub_logs
from ..report.card import CARD_NAME, PLACEHOLDER_ID

# The transport library's base error (httpx2 in huggingface_hub 2.x, requests before), plus OSError for sockets.
_NETWORK_ERRORS = (hub_errors.HfHubHTTPError, getattr(hub_errors, "HTTPError", OSError), OSError)


def check_repo_id(repo_id: Any) -> str:
    """Return ``repo_id`` if it is a valid ``namespace/name``; else raise `PublishError` saying what is allowed."""
    hint = "use 'namespace/name' with letters, digits, '-', '_' and '.', e.g. 'me/bert-pruned'"
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise PublishError(f"repo_id {shown(repo_id)} is not a Hub model id: {hint}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(f"repo_id {shown(repo_id)} is not a Hub model id: {hint}.") from None
    return repo_id


def _scrub(text: str, token: str | None) -> str:
    """Every secret the process knows (the argument, ``HF_TOKEN``, huggingface_hub's token files) replaced."""
    return scrub(text, token)


def _failure(step: str, error: BaseException, endpoint: str, repo_id: str, token: str | None) -> PublishError:
    """One line: what failed, why, and what to do; never the token."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        fix = (f"the token was refused (HTTP {status}): log in with `hf auth login` or pass token= with write "
               f"access to {repo_id}")
    elif status is not None and status >= 500:
        fix = f"the Hub answered HTTP {status}: nothing was published; try again later"
    elif status is not None:
        server = getattr(error, "server_message", None) or ""
        fix = f"the Hub answered HTTP {status}{': ' + server if server else ''}"
    else:
        fix = f"cannot reach {endpoint} ({type(error).__name__}): check the network, proxy or HF_ENDPOINT"
    message = f"push_to_hub failed while {step} for {repo_id}: {fix}. The local folder is unchanged."
    return PublishError(_scrub(" ".join(message.split()), token))


def _operations(folder: str, repo_id: str) -> list[CommitOperationAdd]:
    """Every file of the folder, the card's placeholder id replaced by ``repo_id`` in the uploaded copy only."""
    ops = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel == CARD_NAME:
                with open(path, encoding="utf-8") as f:
                    text = f.read().replace(f'"{PLACEHOLDER_ID}"', f'"{repo_id}"')
                ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=text.encode("utf-8")))
            else:
                ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=path))
    return ops


def _push_folder(folder: str, repo_id: str, private: bool | None, token: str | None, revision: str | None,
                 create_pr: bool, commit_message: str | None, endpoint: str | None) -> str:
    if not os.path.isdir(folder):
        raise PublishError(f"{folder} is not a folder: pass a PruningResult or the folder its save_pretrained wrote.")
    if read_pruning_file(folder).get("loader") != Loader.STATE_DICT:
        check_checkpoint(folder)  # the folder check of load_pruned and `hfprune evaluate`, before any upload
    if not os.path.isfile(os.path.join(folder, CARD_NAME)):
        raise CheckpointError(f"{folder} has no {CARD_NAME}: write the card with "
                              "hfprune.publishing.write_model_card(folder) before pushing.")
    operations = _operations(folder, repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    step = "creating the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and not create_pr and not revision.startswith("refs/"):
            step = f"creating branch {revision}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "uploading the files"
        info = api.create_commit(repo_id, operations, commit_message=commit_message or "Upload pruned model "
                                 "(hfprune)", revision=revision, create_pr=create_pr)
    except _NETWORK_ERRORS as e:
        raise _failure(step, e, api.endpoint, repo_id, token) from None
    except ValueError as e:  # huggingface_hub's answer to a 400 from validate-yaml
        if not str(e).startswith("Invalid metadata"):
            raise
        reason = " ".join(str(e).split("\n", 1)[-1].split()).lstrip("- ")
        raise PublishError(_scrub(f"push_to_hub failed while uploading the files for {repo_id}: the Hub refused "
                                  f"the metadata of {CARD_NAME} ({reason}); regenerate the card with "
                                  "hfprune.publishing.write_model_card(folder). The local folder is unchanged.",
                                  token)) from None
    return info.pr_url if create_pr and info.pr_url else info.commit_url


def push_to_hub(result_or_folder: Any, repo_id: str, private: bool | None = None, token: str | None = None,
                revision: str | None = None, create_pr: bool = False, commit_message: str | None = None,
                endpoint: str | None = None) -> str:
    """Upload a pruned model (weights, ``pruning_config.json``, report, card, plot) in one commit.

    ``result_or_folder`` is a folder written by ``PruningResult.save_pretrained`` or anything with a
    ``save_pretrained(path)`` (saved to a temporary folder first). Creates the repo if needed (and the branch
    ``revision``). Returns the commit URL, or the pull request URL with ``create_pr=True``. Raises `PublishError`
    for an invalid ``repo_id`` (before any request) and for network failures.
    """
    check_repo_id(repo_id)
    register_secret(token)
    scrub_logs()  # huggingface_hub's own log lines (e.g. a request echoed on retry) must not show the token
    args = (repo_id, private, token, revision, create_pr, commit_message, endpoint)
    if isinstance(result_or_folder, (str, os.PathLike)):
        return _push_folder(os.fspath(result_or_folder), *args)
    if not hasattr(result_or_folder, "save_pretrained"):
        raise PublishError(f"push_to_hub got a {type(result_or_folder).__name__}: pass a PruningResult (anything "
                           "with save_pretrained) or the path of a saved folder.")
    with tempfile.TemporaryDirectory(prefix="hfprune-push-") as tmp:
        folder = os.path.join(tmp, repo_id.split("/")[1])
        result_or_folder.save_pretrained(folder)
        return _push_folder(folder, *args)
