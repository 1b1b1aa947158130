"""The queue of requests waiting for the BatchCommands sender: highest priority first (pure).

client-go (``internal/client/priority_queue.go`` and ``batchCommandsBuilder`` in
``client_batch.go``) keeps the requests waiting for a store's batch sender in a priority
queue: each carries the ``override_priority`` of its ``Context.resource_control_context``
(set by resource control), the builder takes the highest first, drops the requests whose
caller gave up, and lets requests of priority :data:`HIGH_TASK_PRIORITY` or more through
without counting them against the batch limit.

:class:`PriorityQueue` is that queue, with two differences that matter in Python:

* Equal priorities leave in arrival order (FIFO). Go's ``container/heap`` does not promise
  it; for a request queue it is the natural order and what the FIFO transport did before.
* Priority 0 — every request unless resource control raised it — does not go through the
  heap: such items wait in a deque, so the normal case costs one ``append`` and one
  ``popleft`` per request. Only prioritized items pay for heap operations. Since priorities
  are never negative, a prioritized item always leaves before every priority-0 item.

:func:`take_batch` is client-go's ``buildWithLimit`` over this queue.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["HIGH_TASK_PRIORITY", "PriorityQueue", "take_batch"]

#: Requests of this priority or higher do not count against the batch limit (client-go
#: ``highTaskPriority`` in ``internal/client/client_batch.go``).
HIGH_TASK_PRIORITY = 10

T = TypeVar("T")


class PriorityQueue(Generic[T]):
    """Items ordered by priority (highest first), FIFO among equal priorities.

    Args:
        canceled: Whether an item's caller gave up on it; :meth:`clean` and
            :func:`take_batch` drop such items (client-go ``Item.isCanceled``).

    """

    __slots__ = ("_canceled", "_heap", "_normal", "_seq", "push_normal")

    def __init__(self, canceled: Callable[[T], bool]) -> None:
        self._canceled = canceled
        # Priority-0 items in arrival order.
        self._normal: collections.deque[T] = collections.deque()
        # Prioritized items as (-priority, arrival number, item): heapq is a min-heap and
        # the arrival number keeps equal priorities FIFO (and items are never compared).
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        #: ``push(item, 0)`` without the method call: the deque's own ``append`` (the
        #: hot path of a transport queueing a priority-0 request).
        self.push_normal: Callable[[T], None] = self._normal.append

    def __len__(self) -> int:
        return len(self._normal) + len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._normal) or bool(self._heap)

    def push(self, item: T, priority: int = 0) -> None:
        """Queue ``item`` with ``priority`` (a non-negative integer, 0 = normal)."""
        if priority:
            if priority < 0:
                raise ValueError(f"priority must be >= 0, got {priority}")
            heapq.heappush(self._heap, (-priority, next(self._seq), item))
        else:
            self._normal.append(item)

    def highest_priority(self) -> int:
        """The priority of the item that leaves next (0 when empty)."""
        heap = self._heap
        return -heap[0][0] if heap else 0

    def pop(self) -> T:
        """Remove and return the item that leaves next.

        Raises:
            IndexError: The queue is empty.

        """
        if self._heap:
            return heapq.heappop(self._heap)[2]
        return self._normal.popleft()

    def pop_with_priority(self) -> tuple[T, int]:
        """Remove the item that leaves next; return it with its priority."""
        if self._heap:
            neg, _, item = heapq.heappop(self._heap)
            return item, -neg
        return self._normal.popleft(), 0

    def take(self, n: int) -> list[T]:
        """Remove and return up to ``n`` items, highest priority first.

        ``n <= 0`` takes nothing; ``n >= len(self)`` takes everything. The queue keeps no
        reference to the items it returns (client-go clears its backing array for the
        same reason: a taken request must not be kept alive by the queue).
        """
        if n <= 0:
            return []
        out: list[T] = []
        heap = self._heap
        while heap and len(out) < n:
            out.append(heapq.heappop(heap)[2])
        normal = self._normal
        want = n - len(out)
        if want >= len(normal):
            out.extend(normal)
            normal.clear()
        else:
            popleft = normal.popleft
            out.extend(popleft() for _ in range(want))
        return out

    def clear(self) -> list[T]:
        """Remove and return every item, highest priority first."""
        return self.take(len(self))

    def clean(self) -> int:
        """Drop every canceled item (client-go ``clean``); return how many were dropped."""
        canceled = self._canceled
        before = len(self)
        normal = self._normal
        if normal:
            kept = [item for item in normal if not canceled(item)]
            if len(kept) != len(normal):
                normal.clear()
                normal.extend(kept)
        heap = self._heap
        if heap:
            live = [e for e in heap if not canceled(e[2])]
            if len(live) != len(heap):
                heapq.heapify(live)
                self._heap = live
        return before - len(self)


def take_batch(queue: PriorityQueue[T], limit: int, batch: list[T]) -> int:
    """Move the next batch's items from ``queue`` into ``batch``, highest priority first.

    client-go ``buildWithLimit``: canceled items are dropped (never sent); items of
    priority :data:`HIGH_TASK_PRIORITY` or more are taken whatever the limit and do not
    count against it; other items are taken while fewer than ``limit`` were counted.

    Returns:
        How many of the moved items count against the limit.

    """
    canceled = queue._canceled
    count = 0
    append = batch.append
    heap = queue._heap
    while heap:
        priority = -heap[0][0]
        if count >= limit and priority < HIGH_TASK_PRIORITY:
            return count
        item = heapq.heappop(heap)[2]
        if canceled(item):
            continue
        append(item)
        if priority < HIGH_TASK_PRIORITY:
            count += 1
    # The priority-0 run: the hot path, one popleft per request.
    normal = queue._normal
    popleft = normal.popleft
    while normal and count < limit:
        item = popleft()
        if canceled(item):
            continue
        append(item)
        count += 1
    return count
