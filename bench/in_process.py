"""Running a producer or consumer loop in this process and timing how fast it gets through a known backlog."""
from __future__ import annotations

import threading
import time
from typing import Any

from kafkashake.runtime.status import counter_totals


def rate_through_backlog(run: Any, counter: str, expected: int) -> float:
    """Start `run.run()` in a thread and return items/s from the first counted item to the `expected`-th, so
    connecting, joining groups and creating topics before it are not counted; then stop the run."""
    runner = threading.Thread(target=run.run, daemon=True)
    runner.start()
    first_at = first_count = None
    while (done := counter_totals(run.metrics.registry, [counter])[counter]) < expected:
        if done and first_at is None:
            first_at, first_count = time.perf_counter(), done
        if not runner.is_alive():
            raise RuntimeError(f"the run stopped after {done:.0f} of {expected} ({counter})")
        time.sleep(0.02)  # looking costs the run the GIL: not too often
    if first_at is None:  # everything landed between two looks
        return float("inf")
    elapsed = time.perf_counter() - first_at
    run.shutdown.request()
    runner.join(60)
    return (expected - first_count) / elapsed
