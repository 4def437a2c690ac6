"""A Prometheus counter cheap enough to count every warm inquiry.

``prometheus_client.Counter.inc`` takes a lock and checks the metric on every call: two
of them (the consumer's admitted requests, the inquiry trace's "over cap") were about
1 us of the warm path's CPU per request.  ``LoopCounter.hit()`` is a step of an
``itertools.count`` (one C call, atomic under the GIL from any thread); the steps are
added into the counter's value whenever the value is read (a scrape, ``collect``,
``REGISTRY.get_sample_value``), so a reader never sees a count that misses a hit.
``inc`` works as on any ``Counter``.
"""

from __future__ import annotations

import itertools
import threading

from prometheus_client import Counter


class LoopCounter(Counter):
    def _metric_init(self) -> None:
        super()._metric_init()
        steps = itertools.count()
        self._steps = steps
        #: ``hit()``: one step (the hot path binds this C method, no Python frame).
        self.hit = steps.__next__
        self._fold_lock = threading.Lock()
        self._own_steps = 0  # the steps ``_fold`` itself took to read the count
        self._folded = 0  # hits already added into the value

    def _fold(self) -> None:
        with self._fold_lock:
            hits = next(self._steps) - self._own_steps
            self._own_steps += 1
            if hits > self._folded:
                self._value.inc(hits - self._folded)
                self._folded = hits

    def _child_samples(self):
        self._fold()
        return super()._child_samples()

    def reset(self) -> None:
        self._fold()
        super().reset()
