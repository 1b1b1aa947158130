"""A typed view of ``sortedcontainers.SortedDict`` (the library ships no type stubs)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

__all__ = ["SortedDict"]

if TYPE_CHECKING:
    _K = TypeVar("_K")
    _V = TypeVar("_V")

    class SortedDict(dict[_K, _V]):
        """The typed subset of ``sortedcontainers.SortedDict`` used by this package."""

        def irange(
            self,
            minimum: _K | None = None,
            maximum: _K | None = None,
            inclusive: tuple[bool, bool] = (True, True),
            reverse: bool = False,
        ) -> Iterator[_K]:
            """Keys between ``minimum`` and ``maximum`` in order."""
            ...

        def bisect_right(self, key: _K) -> int:
            """The index after every key ``<= key``."""
            ...

        def index(self, key: _K) -> int:
            """The position of ``key``."""
            ...

        def peekitem(self, index: int = -1) -> tuple[_K, _V]:
            """The item at ``index`` in key order."""
            ...

        def keys(self) -> Sequence[_K]:  # type: ignore[override]
            """The keys in order (indexable)."""
            ...

        def values(self) -> Sequence[_V]:  # type: ignore[override]
            """The values in key order (indexable)."""
            ...

else:
    from sortedcontainers import SortedDict
