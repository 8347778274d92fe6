"""Counts over a sliding window of time, in fixed steps: constant memory and O(1) to add.

The window is ``steps`` buckets of ``span / steps`` seconds; a total covers the current
bucket and the ``steps - 1`` before it, so between ``span - span / steps`` and ``span``
seconds of history. Envoy's and resilience4j's time-based windows work the same way; a
list of timestamps would grow with the traffic.
"""

from __future__ import annotations


class Window:
    """``counters`` counts per bucket; no lock, no clock: its owner passes ``now``."""

    __slots__ = ("span", "_width", "_steps", "_epochs", "_counts", "_from", "_until", "_current")

    def __init__(self, span: float, counters: int = 2, steps: int = 10) -> None:
        self.span = span
        self._width = span / steps
        self._steps = steps
        self._epochs = [-1] * steps
        self._counts = [[0] * counters for _ in range(steps)]
        # The bucket last added to and the times it covers: most adds land in it.
        self._from = self._until = 0.0
        self._current = self._counts[0]

    def add(self, now: float, index: int, amount: int = 1) -> None:
        if self._from <= now < self._until:
            self._current[index] += amount
            return
        epoch = int(now // self._width)
        slot = epoch % self._steps
        counts = self._counts[slot]
        if self._epochs[slot] != epoch:  # a bucket last used one lap ago or more
            self._epochs[slot] = epoch
            for i in range(len(counts)):
                counts[i] = 0
        counts[index] += amount
        self._from, self._until, self._current = (
            epoch * self._width, (epoch + 1) * self._width, counts)

    def totals(self, now: float) -> list[int]:
        epoch = int(now // self._width)
        oldest = epoch - self._steps + 1
        totals = [0] * len(self._counts[0])
        for bucket_epoch, counts in zip(self._epochs, self._counts, strict=True):
            if oldest <= bucket_epoch <= epoch:
                for i, count in enumerate(counts):
                    totals[i] += count
        return totals

    def clear(self) -> None:
        self._epochs = [-1] * self._steps
        self._from = self._until = 0.0
