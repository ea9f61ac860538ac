"""Progress lines for long runs (stderr, so that stdout keeps only the results)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``label: done/total sentences, seconds, ETA`` every ``every`` sentences."""

    def __init__(self, label: str, total: int, every: int = 50) -> None:
        self.label, self.total, self.every = label, total, max(1, every)
        self.next = self.every
        self.start = time.perf_counter()

    def update(self, done: int, timed_seconds: float) -> None:
        if done >= self.next and done < self.total:
            self.next = (done // self.every + 1) * self.every
            left = timed_seconds / done * (self.total - done)
            print(
                f"  [{self.label}] {done}/{self.total} sentences, {timed_seconds:.1f} s timed, "
                f"ETA {int(left // 60)} min {int(left % 60):02d} s",
                file=sys.stderr,
                flush=True,
            )

    def finish(self, timed_seconds: float) -> None:
        wall = time.perf_counter() - self.start
        print(
            f"  [{self.label}] {self.total}/{self.total} sentences, {timed_seconds:.2f} s timed ({wall:.1f} s wall)",
            file=sys.stderr,
            flush=True,
        )


def stage(message: str) -> None:
    """A top-level step of a long job."""
    print(f"==> {message}", file=sys.stderr, flush=True)
