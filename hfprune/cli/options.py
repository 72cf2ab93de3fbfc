"""Command-line options generated from a config dataclass's fields, their types and their ``help`` metadata.

The same role as transformers' `HfArgumentParser._add_dataclass_arguments` (choices from ``Literal`` types), which
cannot be attached to sub-commands, does not map ``list[str] | None`` fields and has no nested groups: an option
group field (a dataclass) gives dotted flags such as ``--calibration.num-samples``, as jsonargparse does, and a
mapping field (the criterion's ``options``) takes ``KEY=VALUE`` pairs. Defaults are suppressed so that only the
options a user typed reach the dataclass, and its own defaults stay the only ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

import yaml

#: separates a group from its field in ``dest`` (argparse keeps dots in dest names)
_SEP = "."


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a hint such as ``float | None`` or ``list[str] | None``."""
    inner = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(inner) is list:
        return typing.get_args(inner)[0], True
    return inner, False


def _typed(kind: type, alternative: Any = None) -> Any:
    """An argparse ``type=`` that also accepts 'none' for optional fields; with ``int | str`` (``target_params``)
    digits become an int and anything else stays text ('100M'); with ``int | Literal["auto"]`` the literal's
    words stay text."""
    words = typing.get_args(alternative) if typing.get_origin(alternative) is Literal else ()

    def parse(text: str) -> Any:
        if text.lower() == "none":
            return None
        if (alternative is str and not text.strip().isdigit()) or text in words:
            return text
        return kind(text)
    parse.__name__ = kind.__name__
    return parse


def _pairs(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as YAML (numbers, booleans, lists), e.g. ``projections=4``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. projections=4)")
    return key.strip(), yaml.safe_load(value)


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, hint: Any, prefix: str) -> None:
    name = prefix + f.name
    flag = name.replace("_", "-")
    kind, is_list = _base_type(hint)
    flags = [f"--{flag}"] + ([f"--{name}"] if "_" in name and kind is not bool else [])
    kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                          "help": f.metadata.get("help", "").replace("%", "%%")}  # argparse formats help
    if kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif is_list:
        kw.update(nargs="*", metavar=f.name.upper())
    elif typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        optional = kind is not hint and "none" not in choices  # 'none' is None only where None is allowed
        kw.update(type=_typed(type(choices[0])) if optional else type(choices[0]),
                  choices=choices + ((None,) if optional else ()), metavar="{" + ",".join(map(str, choices)) + "}")
    else:
        alternatives = [a for a in typing.get_args(hint) if a not in (kind, type(None))]
        kw.update(type=_typed(kind, alternatives[0] if alternatives else None), metavar=kind.__name__.upper())
    group.add_argument(*flags, **kw)


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, title: str) -> list[str]:
    """Add ``--field-name`` (and ``--field_name``) for every field of ``cls``, ``--group.field`` for the fields of
    its option groups, ``--options KEY=VALUE ...`` for a mapping of options; return the ``dest`` names."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            sub = typing.get_type_hints(hint)
            for g in dataclasses.fields(hint):
                _add_field(group, g, sub[g.name], f.name + _SEP)
                names.append(f.name + _SEP + g.name)
        elif any(a is dict or typing.get_origin(a) is dict for a in typing.get_args(hint)):
            group.add_argument(f"--{f.name}", dest=f.name, nargs="+", action="extend", type=_pairs,
                               default=argparse.SUPPRESS,
                               metavar="KEY=VALUE", help=f.metadata.get("help", "").replace("%", "%%"))
            names.append(f.name)
        else:
            _add_field(group, f, hint, "")
            names.append(f.name)
    return names


def picked(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The dataclass fields the user actually gave, nested by group (``{"calibration": {"num_samples": 8}}``)."""
    out: dict[str, Any] = {}
    for n in names:
        if not hasattr(args, n):
            continue
        value = getattr(args, n)
        if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):  # KEY=VALUE pairs
            value = dict(value)
        group, _, field = n.rpartition(_SEP)
        (out.setdefault(group, {}) if group else out)[field] = value
    return out
