"""Keep Hub tokens out of every message and log line the process writes.

A token can come from an argument (``push_to_hub(token=...)``, ``--token``), the environment (``HF_TOKEN``,
``HUGGING_FACE_HUB_TOKEN``) or the files huggingface_hub writes on ``hf auth login``; it can have any form, not only
``hf_...``. `scrub` replaces every one of them, plus anything shaped like an ``hf_`` token, by ``***``.
"""

from __future__ import annotations

import configparser
import logging
import os
import re

_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
_MIN_LEN = 6  # shorter strings are too common in ordinary text to be replaced safely
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret given as an argument, so later messages of this process scrub it too."""
    if isinstance(value, str) and len(value.strip()) >= _MIN_LEN:
        _registered.add(value.strip())


def _token_files() -> list[str]:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return []
    return [p for p in (getattr(constants, "HF_TOKEN_PATH", None), getattr(constants, "HF_STORED_TOKENS_PATH", None))
            if p]


_cache: dict[tuple, frozenset[str]] = {}


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def known_secrets() -> frozenset[str]:
    """Every token this process can know: registered arguments, the environment and huggingface_hub's files
    (re-read only when one of them changed: every printed line is scrubbed)."""
    files = _token_files()
    key = (frozenset(_registered), tuple(os.environ.get(v) for v in _ENV_VARS),
           tuple((p, _mtime(p)) for p in files))
    if key not in _cache:
        _cache.clear()
        _cache[key] = _read_secrets(files)
    return _cache[key]


def _read_secrets(files: list[str]) -> frozenset[str]:
    found = set(_registered)
    found.update(os.environ[v].strip() for v in _ENV_VARS if os.environ.get(v))
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if os.path.basename(path) == "stored_tokens":  # an INI file: [name] hf_token = ...
            parser = configparser.ConfigParser()
            try:
                parser.read_string(text)
            except configparser.Error:
                continue
            found.update(s.get("hf_token", "").strip() for s in parser.values())
        else:
            found.add(text.strip())
    return frozenset(s for s in found if len(s) >= _MIN_LEN)


def scrub(text: str, extra: str | None = None) -> str:
    """``text`` with every known secret (and ``extra``) replaced by ``***``."""
    secrets = set(known_secrets())
    if extra and len(extra) >= _MIN_LEN:
        secrets.add(extra)
    for s in sorted(secrets, key=len, reverse=True):  # longest first: a token that contains another
        text = text.replace(s, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record's final message (arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = ScrubFilter()


def scrub_logs() -> None:
    """Add the filter to the handlers that print (the root logger's and the libraries' own), once each."""
    loggers = [logging.getLogger(n) for n in ("", "hfprune", "transformers", "huggingface_hub", "datasets")]
    for logger in loggers:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
