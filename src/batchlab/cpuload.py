"""Is this machine already busy? Its load average against its cores, read once when a study
starts, and the torch thread count that `threads = "auto"` (the default) takes from it.

On a machine whose load already fills its cores (a shared box, an oversubscribed node), a
multi-threaded trial's threads wait for each other at every parallel region while other
processes hold the cores: a batch-8 MLP ran at 23 samples/s on 2 threads against 295 on 1
(2 cores, load average ~3). `auto` gives trials only the cores the load leaves free.

Imports nothing heavy (no torch): `read_load` is the one place the machine is read, so a test
passes its own `CpuLoad` (or replaces `read_load`) and does not depend on the machine's load.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, kw_only=True)
class CpuLoad:
    """The machine as a study finds it: `load` is how many cores other work keeps busy (see
    `read_load`; NaN where the OS says nothing), `cpus` its cores, `usable` this process's."""

    load: float
    cpus: int
    usable: int

    @property
    def known(self) -> bool:
        return not math.isnan(self.load)

    @property
    def oversubscribed(self) -> bool:
        """The load already exceeds the cores: every core has something else to run."""
        return self.known and self.load > self.cpus

    @property
    def free(self) -> int:
        """Cores of this process's mask that the load leaves idle (the load taken as spread
        evenly over the machine's cores; a core at least half idle counts), at least 1."""
        if not self.known:
            return self.usable
        idle = max(0.0, 1.0 - self.load / self.cpus)
        return max(1, min(self.usable, math.floor(self.usable * idle + 0.5)))

    def describe(self) -> str:
        mask = f" ({self.usable} usable)" if self.usable != self.cpus else ""
        return f"load {self.load:.1f} on {self.cpus} cores{mask}"


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Reading:
    """The start of a window over which `others_busy_now` measures: the machine's busy CPU
    seconds, this process's own, and the clock. Taken before other work (loading a study's
    data), the window overlaps it: this process's own CPU time is left out either way."""

    busy: float | None
    own: float
    at: float


def begin_reading() -> Reading:
    return Reading(busy=_busy_cpu_seconds(), own=time.process_time(), at=time.monotonic())


def others_busy_now(window_s: float = 0.25, *, since: Reading | None = None) -> float | None:
    """Cores other processes keep busy right now: the machine's busy CPU time over a window of
    at least `window_s` (from `since`, waiting for what is left of it) less this process's
    own (Linux), or None where it cannot be read. Unlike the load average, this does not
    remember the study that this process ran a minute ago."""
    start = since if since is not None else begin_reading()
    time.sleep(max(0.0, window_s - (time.monotonic() - start.at)))
    end, own_end = _busy_cpu_seconds(), time.process_time()
    elapsed = time.monotonic() - start.at
    if start.busy is None or end is None or elapsed <= 0:
        return None
    return max(0.0, ((end - start.busy) - (own_end - start.own)) / elapsed)


def read_load(since: Reading | None = None) -> CpuLoad:
    """This machine's load now: the lesser of the 1-minute load average (`os.getloadavg`) and
    what other processes keep busy over a quarter of a second (`others_busy_now`, from `since`
    when a reading began earlier), so neither a past burst nor this process's own earlier
    work counts; and the affinity mask."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available (Windows)
        load = math.nan
    now = others_busy_now(since=since)
    if now is not None:
        load = now if math.isnan(load) else min(load, now)
    return CpuLoad(load=load, cpus=max(1, os.cpu_count() or 1), usable=usable_cores())


@dataclass(frozen=True, kw_only=True)
class ThreadPlan:
    """How a study uses this machine's CPUs: `threads` for a trial trained in this process,
    `cores` for a pool of workers to share (`executors.threads_for`), and the one-line
    `warning` to print at start (None when the machine is not busy)."""

    threads: int
    cores: int
    warning: str | None = None


def plan_threads(requested: int | None, *, default: int, load: CpuLoad) -> ThreadPlan:
    """The thread plan for `threads = requested` (None: "auto") given torch's `default` thread
    count and the machine's `load`. A fixed count is kept (with a warning on a busy machine);
    "auto" is torch's default, lowered to the free cores when the load takes some."""
    if requested is not None:
        warning = None
        if requested > load.free:
            warning = (
                f"the machine is busy ({load.describe()}): trials on {requested} threads may"
                f' run many times slower; threads = "auto" would use {load.free}'
            )
        return ThreadPlan(threads=requested, cores=load.usable, warning=warning)
    threads = min(default, load.free)
    idle = min(default, load.usable)  # what "auto" gives on an idle machine
    warning = None
    if threads < idle:  # fewer threads than an idle machine would get: say why
        warning = (
            f"the machine is busy ({load.describe()}): trials run on {threads}"
            f' thread{"s" * (threads != 1)}, not {idle} (threads = "auto"; set'
            " threads = N to choose)"
        )
    return ThreadPlan(threads=threads, cores=min(load.usable, load.free), warning=warning)
