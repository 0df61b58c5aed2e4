"""Exclusive wall-clock time per named stage, for the benchmarks' "where the time goes" tables."""
from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter, defaultdict

import torch

__all__ = ["StageClock"]


class StageClock:
    """Exclusive wall-clock seconds per named stage: entering a stage pauses the one it is nested in.

    ``clock``: the time source (default ``time.perf_counter``; ``time.thread_time`` counts this
    thread's CPU seconds, i.e. core-seconds of single-threaded work)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.seconds = defaultdict(float)
        self.calls = Counter()
        self._stack: list[str] = []
        self._mark = 0.0

    def enter(self, name: str) -> None:
        now = self.clock()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._stack.append(name)
        self._mark = now

    def exit(self) -> None:
        now = self.clock()
        name = self._stack.pop()
        self.seconds[name] += now - self._mark
        self.calls[name] += 1
        self._mark = now

    @contextlib.contextmanager
    def stage(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def wrap(self, name: str, fn):
        """``fn`` timed as stage ``name``."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        return timed

    def hook_module(self, name: str, module: torch.nn.Module) -> None:
        """Time a module's calls with forward hooks (they run eagerly even when its forward is compiled)."""
        module.register_forward_pre_hook(lambda *_: self.enter(name))
        module.register_forward_hook(lambda *_: self.exit())

    def reset(self) -> None:
        """Forget the times and counts so far (between timed runs)."""
        self.seconds = defaultdict(float)
        self.calls = Counter()
