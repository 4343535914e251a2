"""How many lanes (concurrent ordered bulk writes, consumer/applier.py) a run's documents are written in.

A destination that serves concurrent writes in parallel (a mongod on several cores, or one a long round trip away)
takes more documents per second in more lanes; one that serialises them, or whose disk is the limit, takes fewer,
its lanes then contending with each other. Which it is depends on the deployment and its load, so by default the
count is measured, a batch of changes at a time (the applier splits a batch's large runs into one count and times
them together). First it climbs the ladder: batches are written at one count and the next, interleaved, and while
the higher count is faster it goes on to the next pair. Then batches are written at the chosen count and, every so
often, at the counts beside it, interleaved, and the count whose batches were written fastest is kept."""
from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Callable

log = logging.getLogger("kafkashake.consumer.write_lanes")

LADDER = (1, 2, 4, 8)
MEASURED_WRITES = 500  # a run with fewer writes per collection is mostly a round trip, whatever its lanes: not timed
SETTLED_BATCHES = 40  # timed batches at the chosen count between two probes
PROBE_BATCHES = 3  # timed batches per count in a probe: their median, so one slow batch (a new connection) is outvoted
BETTER_BY = 1.05  # a probed count replaces the chosen one if its batches went this much faster


def write_lanes(fixed: int, on_change: Callable[[int], None]) -> FixedLanes | LaneTuner:
    """--write-lanes: a count, or 0 for auto."""
    if fixed:
        on_change(fixed)
        return FixedLanes(fixed)
    return LaneTuner(on_change)


class FixedLanes:
    """--write-lanes N."""

    def __init__(self, count: int) -> None:
        self.count = count

    def most(self) -> int:
        return self.count

    @property
    def chosen(self) -> int:
        return self.count

    def draw(self) -> int:
        return self.count

    def record(self, lanes: int, writes: int, seconds: float) -> None:
        pass


class LaneTuner:
    """--write-lanes auto. `draw` is asked while a batch is prepared, `record` told once its timed runs are
    written, from another thread and after the next batch was prepared; a prepared batch may never be written
    (prepared again, for parked events or after a transient error)."""

    def __init__(self, on_change: Callable[[int], None] = lambda count: None, ladder: tuple[int, ...] = LADDER) -> None:
        self._ladder = ladder
        self._on_change = on_change
        self._lock = threading.Lock()
        self._chosen = ladder[len(ladder) // 2]  # until the climb ends (small batches are never timed)
        self._settled = 0
        self._climbing = True
        self._probe: dict[int, list[float]] = {}
        self._planned: dict[int, int] = {}
        self._start_probe(ladder[:2])
        on_change(self._chosen)

    def most(self) -> int:
        return max(self._ladder)

    @property
    def chosen(self) -> int:
        return self._chosen

    def draw(self) -> int:
        """The count to split a batch's timed runs into."""
        with self._lock:
            if not self._probe:
                return self._chosen
            # Fewest samples first, as a plan may be dropped; then fewest plans, so batches prepared ahead interleave.
            count = min(self._probe, key=lambda c: (len(self._probe[c]), self._planned[c], c != self._chosen))
            self._planned[count] += 1
            return count

    def record(self, lanes: int, writes: int, seconds: float) -> None:
        if writes < MEASURED_WRITES or seconds <= 0:
            return
        with self._lock:
            if self._probe:
                if lanes in self._probe:
                    self._probe[lanes].append(writes / seconds)
                if all(len(rates) >= PROBE_BATCHES for rates in self._probe.values()):
                    self._decide()
            elif lanes == self._chosen:
                self._settled += 1
                if self._settled >= SETTLED_BATCHES:
                    self._start_probe()

    def _decide(self) -> None:
        rates = {count: statistics.median(samples) for count, samples in self._probe.items()}
        if self._climbing:
            low, high = sorted(rates)
            higher_faster = rates[high] >= BETTER_BY * rates[low]
            if higher_faster and high != self._ladder[-1]:
                self._start_probe(self._ladder[self._ladder.index(high):][:2])
                return
            self._climbing = False
            best = high if higher_faster else low
        else:
            best = max(rates, key=rates.__getitem__)
            if rates[best] < BETTER_BY * rates[self._chosen]:
                best = self._chosen
        if best != self._chosen:
            log.info("write lanes changed: the destination took writes fastest in this many lanes",
                     extra={"lanes": best, "was": self._chosen,
                            "writes_per_second": {count: round(rate) for count, rate in sorted(rates.items())}})
            self._chosen = best
            self._on_change(best)
        self._probe, self._settled = {}, 0

    def _start_probe(self, counts: tuple[int, ...] | None = None) -> None:
        """The counts beside the chosen one, or `counts` while climbing."""
        if counts is None:
            at = self._ladder.index(self._chosen)
            counts = self._ladder[max(at - 1, 0): at + 2]
        self._probe = {count: [] for count in counts}
        self._planned = dict.fromkeys(counts, 0)
