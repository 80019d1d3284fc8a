"""Value coercers shared by the AnimateDiff parser (``params``) and the SVD parser (``svd.params``).

A UI component, a JSON body, pasted infotext and an XYZ axis hand over the same field as a bool, a
number or text. A coercer turns any of these forms into the field's type, or raises ``Rejected``.
It knows nothing about the field: each parser keeps the field's key and its "what is allowed" text
in its field table, and turns ``Rejected`` into one message naming the field, the value given and
what is allowed. Only field-independent coercers live here; ones tied to one parser's fields stay
with that parser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any


class Rejected(Exception):
    """The value cannot become the field's type; the parser writes the message."""


def as_bool(value: Any) -> bool:
    """A bool, 0/1, or text true/false, 1/0, yes/no, on/off ("" is false)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    raise Rejected


def finite_number(value: Any) -> float:
    """A finite int, float or numeric text as a float; bools and None are refused (True is not 1)."""
    if isinstance(value, bool) or value is None:
        raise Rejected
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise Rejected from None
    else:
        raise Rejected
    if not math.isfinite(number):
        raise Rejected
    return number


def int_in(low: int, high: int) -> Callable[[Any], int]:
    """A whole number from ``low`` to ``high`` inclusive ("8" and 8.0 count; 8.5 does not)."""

    def coerce(value: Any) -> int:
        number = finite_number(value)
        if not number.is_integer() or not low <= number <= high:
            raise Rejected
        return int(number)

    return coerce


def float_in(low: float, high: float) -> Callable[[Any], float]:
    """A number from ``low`` to ``high`` inclusive."""

    def coerce(value: Any) -> float:
        number = finite_number(value)
        if not low <= number <= high:
            raise Rejected
        return number

    return coerce


def enum_of(kind: type[Enum]) -> Callable[[Any], Any]:
    """A member of ``kind``, or its value or name as text in any case."""
    by_text = {member.value.lower(): member for member in kind} | {m.name.lower(): m for m in kind}

    def coerce(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        if isinstance(value, str) and value.strip().lower() in by_text:
            return by_text[value.strip().lower()]
        raise Rejected

    return coerce


LIST_SEPARATORS = (",", "/", "+", "|", ";")  # besides spaces, in text such as "GIF/MP4"


def enum_list(kind: type[Enum]) -> Callable[[Any], tuple[Any, ...]]:
    """One or more members of ``kind`` as a tuple, each once in the order given: from a list or set
    of members or texts, or one text with the members split by spaces or ``LIST_SEPARATORS``."""
    one = enum_of(kind)

    def coerce(value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            for separator in LIST_SEPARATORS:
                value = value.replace(separator, " ")
            value = value.split()
        if not isinstance(value, Sequence | set | frozenset) or isinstance(value, bytes):
            raise Rejected
        members: list[Any] = []
        for item in value:
            parsed = one(item)
            if parsed not in members:
                members.append(parsed)
        if not members:
            raise Rejected
        return tuple(members)

    return coerce


def text_up_to(max_len: int) -> Callable[[Any], str]:
    """Text of at most ``max_len`` characters (counted before stripping), stripped; None is ""."""

    def coerce(value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > max_len:
            raise Rejected
        return value.strip()

    return coerce
