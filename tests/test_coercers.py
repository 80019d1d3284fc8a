"""The shared coercers on their own: each accepted form gives the typed value (type included), each
refused form raises ``Rejected``. The message naming the field, the value and what is allowed is
the parsers' part (test_params, test_svd_params)."""

from __future__ import annotations

from enum import Enum

import pytest

from motion_module.coercers import (
    Rejected,
    as_bool,
    enum_list,
    enum_of,
    finite_number,
    float_in,
    int_in,
    text_up_to,
)


class Colour(str, Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


ACCEPTED = [
    (as_bool, True, True),
    (as_bool, 0, False),
    (as_bool, 1.0, True),
    (as_bool, " Yes ", True),
    (as_bool, "on", True),
    (as_bool, "OFF", False),
    (as_bool, "", False),
    (finite_number, 3, 3.0),
    (finite_number, " -2.5 ", -2.5),
    (finite_number, "1e3", 1000.0),
    (int_in(-1, 8), "8", 8),
    (int_in(-1, 8), 4.0, 4),
    (int_in(-1, 8), -1, -1),
    (float_in(0.1, 10.0), "0.1", 0.1),
    (float_in(0.1, 10.0), 10, 10.0),
    (enum_of(Colour), Colour.RED, Colour.RED),
    (enum_of(Colour), " RED ", Colour.RED),
    (enum_of(Colour), "Dark-Blue", Colour.DARK_BLUE),  # by value
    (enum_of(Colour), "dark_blue", Colour.DARK_BLUE),  # by name
    (enum_list(Colour), "red/dark-blue", (Colour.RED, Colour.DARK_BLUE)),
    (enum_list(Colour), "dark-blue, red;red | dark-blue+red", (Colour.DARK_BLUE, Colour.RED)),
    (enum_list(Colour), ["RED", Colour.RED], (Colour.RED,)),
    (enum_list(Colour), ("dark-blue",), (Colour.DARK_BLUE,)),
    (enum_list(Colour), frozenset({"red"}), (Colour.RED,)),
    (text_up_to(5), " abc ", "abc"),
    (text_up_to(5), "abcde", "abcde"),
    (text_up_to(5), None, ""),
]


@pytest.mark.parametrize(("coerce", "value", "expected"), ACCEPTED)
def test_accepted_values_become_the_typed_value(coerce, value, expected):
    result = coerce(value)
    assert result == expected and type(result) is type(expected)


REFUSED = [
    (as_bool, 2),
    (as_bool, "maybe"),
    (as_bool, None),
    (finite_number, True),  # a bool is not a number here
    (finite_number, None),
    (finite_number, "many"),
    (finite_number, float("nan")),
    (finite_number, "inf"),
    (finite_number, [1]),
    (int_in(-1, 8), 2.5),
    (int_in(-1, 8), 9),
    (int_in(-1, 8), -2),
    (int_in(-1, 8), False),
    (float_in(0.1, 10.0), 0.09),
    (float_in(0.1, 10.0), 10.01),
    (float_in(0.1, 10.0), "-inf"),
    (enum_of(Colour), "green"),
    (enum_of(Colour), 1),
    (enum_list(Colour), []),
    (enum_list(Colour), " / , "),
    (enum_list(Colour), ["red", "green"]),
    (enum_list(Colour), 5),
    (enum_list(Colour), b"red"),
    (enum_list(Colour), {"red": 1}),
    (text_up_to(5), "abcdef"),
    (text_up_to(5), "  abcd "),  # the length counts before stripping
    (text_up_to(5), 7),
    (text_up_to(5), ["a"]),
]


@pytest.mark.parametrize(("coerce", "value"), REFUSED)
def test_refused_values_raise_rejected(coerce, value):
    with pytest.raises(Rejected):
        coerce(value)
