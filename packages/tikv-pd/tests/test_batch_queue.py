"""The BatchCommands sender's priority queue (client-go ``priority_queue_test.go``)."""

from __future__ import annotations

import gc
import weakref

import pytest
from tikv_pd.batch_queue import HIGH_TASK_PRIORITY, PriorityQueue, take_batch


class Item:
    """A queued request stand-in: a value, a priority, and whether its caller gave up."""

    def __init__(self, value: int, priority: int = 0, *, canceled: bool = False) -> None:
        self.value = value
        self.priority = priority
        self.canceled = canceled


def new_queue() -> PriorityQueue[Item]:
    return PriorityQueue(lambda item: item.canceled)


def fill(queue: PriorityQueue[Item], *items: Item) -> None:
    for item in items:
        queue.push(item, item.priority)


def test_priority() -> None:
    # client-go TestPriority: take 1, then 2, then more than is left; clean drops the
    # canceled.
    queue = new_queue()
    fill(queue, *(Item(i, i) for i in range(1, 6)))
    assert len(queue) == 5
    assert queue.highest_priority() == 5
    assert queue.clean() == 0
    assert len(queue) == 5

    assert [i.priority for i in queue.take(1)] == [5]
    assert queue.highest_priority() == 4
    assert [i.priority for i in queue.take(2)] == [4, 3]
    assert queue.highest_priority() == 2
    assert [i.priority for i in queue.take(5)] == [2, 1]
    assert queue.highest_priority() == 0
    assert len(queue) == 0
    assert not queue

    queue.push(Item(1, 1, canceled=True), 1)
    assert len(queue) == 1
    assert queue.clean() == 1
    assert len(queue) == 0


def test_take_is_fifo_among_equal_priorities_and_priority_zero_comes_last() -> None:
    queue = new_queue()
    order = [(0, 0), (1, 3), (2, 0), (3, 7), (4, 3), (5, 0), (6, 7), (7, 3)]
    fill(queue, *(Item(v, p) for v, p in order))
    assert queue.highest_priority() == 7
    assert [i.value for i in queue.take(len(queue))] == [3, 6, 1, 4, 7, 0, 2, 5]
    # Interleaved pushes and takes keep the same rule.
    fill(queue, Item(10), Item(11, 2), Item(12))
    assert [i.value for i in queue.take(2)] == [11, 10]
    fill(queue, Item(13, 1), Item(14))
    assert [i.value for i in queue.take(10)] == [13, 12, 14]


def test_take_nothing_and_empty_queue() -> None:
    queue = new_queue()
    assert queue.take(3) == []
    assert queue.highest_priority() == 0
    fill(queue, Item(1, 4), Item(2))
    assert queue.take(0) == []
    assert queue.take(-1) == []
    assert len(queue) == 2
    assert queue.pop().value == 1
    assert queue.pop().value == 2
    with pytest.raises(IndexError):
        queue.pop()


def test_clear_returns_everything_highest_first() -> None:
    queue = new_queue()
    fill(queue, Item(1), Item(2, 5), Item(3))
    assert [i.value for i in queue.clear()] == [2, 1, 3]
    assert len(queue) == 0


def test_negative_priority_is_rejected() -> None:
    queue = new_queue()
    with pytest.raises(ValueError, match="priority must be >= 0"):
        queue.push(Item(1), -1)
    assert len(queue) == 0


def test_clean_drops_canceled_items_of_both_kinds_and_keeps_order() -> None:
    queue = new_queue()
    fill(
        queue,
        Item(1),
        Item(2, canceled=True),
        Item(3, 4),
        Item(4, 4, canceled=True),
        Item(5, 9, canceled=True),
        Item(6),
        Item(7, 2),
    )
    assert queue.clean() == 3
    assert len(queue) == 4
    assert queue.highest_priority() == 4
    assert [i.value for i in queue.take(10)] == [3, 7, 1, 6]


def test_take_all_leaves_no_references() -> None:
    # client-go TestPriorityQueueTakeAllLeavesReferencesInBackingArray: the queue must
    # not keep taken (or cleaned) items alive — they hold the requests' keys and values.
    queue = new_queue()
    items = [Item(i, i + 1) for i in range(3)] + [Item(10 + i) for i in range(3)]
    refs = [weakref.ref(i) for i in items]
    fill(queue, *items)
    del items

    taken = queue.take(1)
    assert len(queue) == 5
    assert [i.value for i in taken] == [2]
    del taken
    gc.collect()
    assert refs[2]() is None
    assert sum(r() is not None for r in refs) == 5

    taken = queue.take(len(queue))
    assert len(queue) == 0
    del taken
    gc.collect()
    assert all(r() is None for r in refs)

    canceled = [Item(i, i % 2, canceled=True) for i in range(4)]
    refs = [weakref.ref(i) for i in canceled]
    fill(queue, *canceled)
    del canceled
    assert queue.clean() == 4
    assert len(queue) == 0
    gc.collect()
    assert all(r() is None for r in refs)


def test_take_batch_takes_highest_first_and_skips_canceled() -> None:
    # client-go buildWithLimit: canceled entries are never collected.
    queue = new_queue()
    fill(
        queue,
        Item(1),
        Item(2, canceled=True),
        Item(3, 5),
        Item(4, 5, canceled=True),
        Item(5),
        Item(6),
    )
    batch: list[Item] = []
    assert take_batch(queue, 2, batch) == 2
    assert [i.value for i in batch] == [3, 1]
    batch.clear()
    assert take_batch(queue, 10, batch) == 2
    assert [i.value for i in batch] == [5, 6]
    assert len(queue) == 0


def test_take_batch_high_priority_does_not_consume_the_limit() -> None:
    # client-go TestLimitConcurrency (client_test.go): entries of priority >=
    # highTaskPriority are sent whatever the limit; the others are limited.
    queue = new_queue()
    fill(
        queue,
        Item(1),
        Item(2),
        Item(3, HIGH_TASK_PRIORITY),
        Item(4, HIGH_TASK_PRIORITY - 1),
        Item(5, HIGH_TASK_PRIORITY + 5),
        Item(6),
    )
    batch: list[Item] = []
    counted = take_batch(queue, 1, batch)
    # Both high-priority items, then one counted item (the best of the rest).
    assert [i.value for i in batch] == [5, 3, 4]
    assert counted == 1
    batch.clear()
    # A zero limit still lets high-priority items through, and nothing else.
    fill(queue, Item(7, HIGH_TASK_PRIORITY))
    assert take_batch(queue, 0, batch) == 0
    assert [i.value for i in batch] == [7]
    assert [i.value for i in queue.take(10)] == [1, 2, 6]


def test_take_batch_counts_only_live_items() -> None:
    queue = new_queue()
    fill(queue, *(Item(i, canceled=i % 2 == 0) for i in range(10)))
    batch: list[Item] = []
    assert take_batch(queue, 3, batch) == 3
    assert [i.value for i in batch] == [1, 3, 5]
    # take() hands back what is queued, canceled or not (the caller decides).
    assert [i.value for i in queue.take(10)] == [6, 7, 8, 9]
