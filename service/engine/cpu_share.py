"""How many CPU threads llama.cpp may use for the next step, given who else wants the cores
(issue #12).

Every operation of a llama.cpp graph ends in a barrier where each thread spins until the slowest
one arrives; OpenMP's barrier spins too. When a thread is taken off its core, by a second
llama.cpp process or any busy job, its partners spin through their own time slices and a step
waits for the scheduler hundreds of times. Measured on 2 cores (SmolLM2, 2 threads): alone 80
tokens/s, two processes at once 18 each, beside two busy loops 0.3. With one thread there is no
barrier: the same process keeps 55 tokens/s beside a twin and 34 beside two busy loops.

So the decode loop asks this governor before each step. It reads how much CPU the rest of the
machine used since it last looked (``/proc/stat`` busy time, steal included, less this
process's own CPU time) and leaves that many cores alone, rounded so that a core half taken
counts as taken. It gives threads back only once the cores have been free for two windows in a
row, so two processes sharing a host settle instead of taking turns. Where ``/proc/stat`` does
not exist it keeps every thread, as before.

The decisions are pure arithmetic on samples (``ThreadGovernor.decide``); ``read_cpu_sample``
is the only part that touches the machine.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# Columns of a /proc/stat cpu line that count as busy: user, nice, system, irq, softirq, steal
# (a vCPU the hypervisor gave to another guest is as absent as one another process holds).
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class CpuSample:
    """A reading of the clock, the busy time of our cores and our own CPU time, in seconds."""

    wall: float
    busy: float
    own: float


def allowed_cores() -> frozenset[int]:
    """The cores this process may run on (a container's cpuset or taskset, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def read_cpu_sample(cores: frozenset[int], stat: Path = PROC_STAT) -> CpuSample | None:
    """None where the machine does not say (no /proc/stat)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy_ticks = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        columns = rest.split()
        busy_ticks += sum(int(columns[i]) for i in _BUSY_COLUMNS if i < len(columns))
    return CpuSample(wall=time.monotonic(), busy=busy_ticks * _TICK_S, own=time.process_time())


class ThreadGovernor:
    """Chooses the thread count for each step: ``most`` when the cores are free, fewer when
    other processes use them. ``policy="fixed"`` always answers ``most``."""

    def __init__(
        self,
        most: int,
        cores: int,
        policy: str = "adaptive",
        window_s: float = 0.5,
        read: Callable[[], CpuSample | None] | None = None,
    ) -> None:
        self.most = max(1, most)
        self.cores = max(1, cores)
        self.window_s = window_s
        self.threads = self.most
        self.others = 0.0  # cores the rest of the machine used in the last window
        self._read = read if policy == "adaptive" else None
        self._last = self._read() if self._read else None
        self._free_windows = 0

    def threads_for_next_step(self) -> int:
        """The thread count to decode the next step with (cheap: reads the machine at most
        once per window)."""
        if self._read is None or self._last is None:
            return self.threads
        now = time.monotonic()
        if now - self._last.wall < self.window_s:
            return self.threads
        sample = self._read()
        if sample is None:
            return self.threads
        before, self._last = self._last, sample
        return self.decide(before, sample)

    def decide(self, before: CpuSample, after: CpuSample) -> int:
        """The thread count for the steps after the window from ``before`` to ``after``."""
        self.threads = self._wanted(before, after)
        return self.threads

    def _wanted(self, before: CpuSample, after: CpuSample) -> int:
        wall = after.wall - before.wall
        if wall <= 0:
            return self.threads
        self.others = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall
        # A core the others use half of is theirs: our thread there would stall every barrier.
        free = self.cores - math.floor(self.others + 0.5)
        wanted = max(1, min(self.most, free))
        if wanted < self.threads:
            self._free_windows = 0
            return wanted
        if wanted > self.threads:
            # Give threads back only when the cores stayed free for two windows in a row, and
            # only when the others left clearly (under a quarter of a core more than we leave).
            clearly = max(1, min(self.most, self.cores - math.floor(self.others + 0.75)))
            self._free_windows = self._free_windows + 1 if clearly > self.threads else 0
            if self._free_windows >= 2:
                self._free_windows = 0
                return clearly
            return self.threads
        self._free_windows = 0
        return self.threads
