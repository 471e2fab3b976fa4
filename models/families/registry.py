"""The registry of compression families: a family is known by the name its class registers."""

from __future__ import annotations

from typing import TypeVar

from models.families.base import Family

F = TypeVar("F", bound=type[Family])

_FAMILIES: dict[str, Family] = {}


def register(cls: F) -> F:
    """Class decorator: make `cls` (with its default config) the handler of `cls.name`."""
    if cls.name in _FAMILIES:
        raise ValueError(f"compression family {cls.name!r} is registered twice")
    _FAMILIES[cls.name] = cls()
    return cls


def get(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose one of {names()}") from None


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)
