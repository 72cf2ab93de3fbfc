"""Command-line options generated from a config dataclass's fields and their ``help`` metadata.

The same role as transformers' `HfArgumentParser._add_dataclass_arguments`, which cannot be attached to
sub-commands and does not map ``list[str] | None`` fields; the option table is never written twice. Defaults are
suppressed so that only the options a user typed reach the dataclass, and its own defaults stay the only ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a hint such as ``float | None`` or ``list[str] | None``."""
    inner = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(inner) is list:
        return typing.get_args(inner)[0], True
    return inner, False


def _typed(kind: type, alternative: type | None = None) -> Any:
    """An argparse ``type=`` that also accepts 'none' for optional fields; with ``int | str`` (``target_params``)
    digits become an int and anything else stays text ('100M')."""
    def parse(text: str) -> Any:
        if text.lower() == "none":
            return None
        if alternative is str and not text.strip().isdigit():
            return text
        return kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, title: str,
                          rules: dict[str, Any] | None = None) -> list[str]:
    """Add ``--field-name`` (and ``--field_name``) for every field of ``cls``; return the field names. A field
    whose rule in ``rules`` (e.g. `hfprune.config.checks.FIELD_RULES`) is a fixed set of values gets argparse
    ``choices``: the choices are declared once, for validation and the command line alike."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        kind, is_list = _base_type(hints[f.name])
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name and kind is not bool else [])
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f.metadata.get("help", "").replace("%", "%%")}  # argparse formats help
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif is_list:
            kw.update(nargs="*", metavar=f.name.upper())
        else:
            alternatives = [a for a in typing.get_args(hints[f.name]) if a not in (kind, type(None))]
            kw.update(type=_typed(kind, alternatives[0] if alternatives else None), metavar=kind.__name__.upper())
            choices = getattr((rules or {}).get(f.name), "choices", ())
            if choices:
                kw.update(choices=choices, metavar="{" + ",".join(str(c).lower() if c is None else str(c)
                                                                  for c in choices) + "}")
        group.add_argument(*flags, **kw)
        names.append(f.name)
    return names


def picked(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The dataclass fields the user actually gave."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}
