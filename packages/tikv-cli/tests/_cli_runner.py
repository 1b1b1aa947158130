"""The result type of the ``tikv`` fixture (see conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Outcome:
    """Exit status and captured output of one ``tikv`` run."""

    code: int
    out: str
    err: str


#: ``tikv("raw", "get", "k", ...)`` → Outcome.
Tikv = Callable[..., Outcome]
