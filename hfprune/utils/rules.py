"""Validation rules for dataclass fields: a predicate and the words an error message uses, one per field.

`rule_for_hint` derives a rule from a field's type hint (``Literal`` choices, booleans that are booleans, finite
numbers); tables such as `hfprune.config.checks.FIELD_RULES` add only ranges. Used by `PruningConfig` and its
option groups, the criteria's options and the recipe sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError, shown


@dataclass(frozen=True)
class Rule:
    """What a field accepts: a predicate and the words that describe it in the error message."""

    ok: Callable[[Any], bool]
    allowed: str
    choices: tuple = ()  # the values allowed, when they are a fixed set (the CLI's argparse `choices`)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed}, or None",
                rule.choices + (None,) if rule.choices else ())


def integer(low: int | None = None, allowed: str | None = None) -> Rule:
    return Rule(lambda v: is_int(v) and (low is None or v >= low),
                allowed or "an integer" + (f" >= {low}" if low is not None else ""))


def number(low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False, allowed: str | None = None) -> Rule:
    """A finite int or float (never a bool or a string) in the given interval."""
    def ok(v: Any) -> bool:
        if not is_number(v):
            return False
        if low is not None and (v < low or (open_low and v == low)):
            return False
        return high is None or not (v > high or (open_high and v == high))
    if allowed is None:
        bounds = f" in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}" if high is not None else (
            f" {'>' if open_low else '>='} {low}" if low is not None else "")
        allowed = f"a finite number{bounds}"
    return Rule(ok, allowed)


def choice(*values: Any) -> Rule:
    """One of ``values``, of the same type (so True is not the integer 1 and "1" is not 1)."""
    return Rule(lambda v: any(type(v) is type(c) and v == c for c in values),
                "one of " + ", ".join(map(repr, values)), tuple(values))


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false (a boolean; strings such as 'no' are not booleans)")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
NAME = Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
PATTERNS = Rule(lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v),
                "a list of glob patterns of module names, e.g. ['*.mlp.*']")
MAPPING = Rule(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a mapping of names to values")
ANYTHING = Rule(lambda v: True, "anything")


def rule_for_hint(hint: Any) -> Rule:
    """The rule a type hint implies: ``Literal[...]`` (its values are the choices), ``bool``, ``int``, ``float``,
    ``str``, ``X | None``, ``list[str]``, ``dict``."""
    if get_origin(hint) is Literal:
        return choice(*get_args(hint))
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
        return optional(rule_for_hint(args[0]))
    origin = get_origin(hint) or hint
    return {bool: BOOLEAN, int: integer(), float: number(), str: TEXT, list: PATTERNS, dict: MAPPING}.get(
        origin, ANYTHING)


def check_fields(obj: Any, rules: dict[str, Rule], where: str) -> None:
    """Check every dataclass field of ``obj`` against ``rules`` (or the rule its type hint implies)."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        rule = rules.get(f.name) or rule_for_hint(hints[f.name])
        value = getattr(obj, f.name)
        if not rule.ok(value):
            raise ConfigError(f"{where}.{f.name}={shown(value)} is not allowed: {rule.allowed}.")


def build_group(cls: type, value: Any, where: str) -> Any:
    """``value`` as an instance of the group ``cls``: an instance is kept, a mapping is checked key by key (unknown
    keys name the closest valid one) and built; anything else is an error naming the field."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}={shown(value)} is not allowed: a {cls.__name__} or a mapping of its fields "
                          f"({', '.join(f.name for f in dataclasses.fields(cls)) or 'none'}).")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else (
                f" Valid keys: {', '.join(known)}." if known else " It takes no options.")
            raise ConfigError(f"{where} has no option {shown(key)}.{hint}")
    return cls(**value)
