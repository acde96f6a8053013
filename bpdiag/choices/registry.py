"""Name → value lookup shared by every registry (activations, losses, inits, optimizers, clipping)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(field: str, name: object, table: Mapping[str, T], extra: Iterable[str] = ()) -> T:
    """Return ``table[name]``; unknown names raise ``ValueError`` listing the valid ones.

    ``extra`` names further accepted spellings (e.g. parametrised patterns) for the message.
    """
    if not isinstance(name, str):
        raise TypeError(f"{field} must be a string, got {name!r} ({type(name).__name__})")
    try:
        return table[name]
    except KeyError:
        valid = ", ".join([*sorted(table), *extra])
        raise ValueError(f"unknown {field} {name!r}; valid: {valid}") from None
