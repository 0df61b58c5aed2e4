"""The signals that stop a training run, and what each process does with them.

Four signals ask a run to stop: SIGINT (Ctrl-C), SIGTERM (a cluster's preemption or ``scancel``,
torchrun forwarding its own), SIGUSR1 (SLURM's warning before the time limit,
``#SBATCH --signal=USR1@300``) and SIGHUP (the terminal closed: a dropped ssh session).

While training (:meth:`StopSignals.handled`, then :meth:`StopSignals.start_training`), the first
one asks the loop to stop after the current step; the loop saves ``last.pth`` and the run exits
with :data:`utils.runtime.EXIT_STOPPED` (75, sysexits' EX_TEMPFAIL: "run again"), which is
neither a failure (1), a user error (2) nor a death by a signal, so a job script or a scheduler
can tell "stopped, continue with --auto-resume" from the rest. Further signals of the same burst
do nothing more: SLURM signals the workers and torchrun then forwards the SIGTERM it got itself,
a launcher may forward a Ctrl-C that the process also received. Only a second SIGINT at least
:data:`REPEAT_CTRL_C_S` seconds after an earlier one (a person pressing Ctrl-C again) exits at
once, without saving, with status 130 (the previous ``last.pth`` is intact: writes are atomic).
Before training begins there is nothing to save: a stop signal is a KeyboardInterrupt (one
``interrupted`` line, status 130, and a start that fails leaves no run folder).

After SIGHUP the terminal is gone: standard output and error, where they were that terminal,
are sent to /dev/null (train.log keeps the record), so no later write fails and Python's final
flush cannot change the exit status.

DataLoader worker processes ignore all four (:func:`ignore_stop_signals`): a cluster signals
every process of the job, torchrun a worker's whole process group, a closing shell its job's;
the main process decides, finishes its step and ends its workers itself. (They also leave by
themselves once the main process is gone.)
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Iterator, List, Optional

from utils.runtime import EXIT_INTERRUPTED, EXIT_STOPPED

__all__ = ["STOP_SIGNALS", "REPEAT_CTRL_C_S", "StopSignals", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
# A SIGINT this long after an earlier one is a person pressing Ctrl-C again (exit at once);
# one that comes sooner is the same Ctrl-C delivered twice (terminal and launcher).
REPEAT_CTRL_C_S = 2.0


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores the stop signals (the main process decides)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _write(text: str) -> None:
    """Straight to stderr (logging is not safe inside a signal handler); a gone terminal is no error."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class StopSignals:
    """The stop signals of one training process; :meth:`received` is the one that asked to stop.

    ``announce``: this process says what it does on stderr (rank 0; every rank gets the signals).
    """

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.signal: Optional[int] = None
        self.training = False
        self._first_sigint: Optional[float] = None
        self._terminal_fds: List[int] = []

    def received(self) -> Optional[int]:
        return self.signal

    def start_training(self) -> None:
        """From now on a stop signal stops the loop after its step (before: KeyboardInterrupt)."""
        self.training = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self._leave_closed_terminal()
        if not self.training:
            raise KeyboardInterrupt(name)
        now = time.monotonic()
        if signum == signal.SIGINT and self._first_sigint is not None:
            if now - self._first_sigint >= REPEAT_CTRL_C_S:
                _write(f"\n{name} again: exiting at once without saving (last.pth holds the last checkpoint)\n")
                os._exit(EXIT_INTERRUPTED)     # noqa: WPS421 - at once: no cleanup that could hang
            self._say(f"\n{name} again within {REPEAT_CTRL_C_S:g} s: the same stop (Ctrl-C again later to exit "
                      f"at once, without saving)\n")
            return
        if signum == signal.SIGINT:
            self._first_sigint = now
        if self.signal is None:
            self.signal = signum
            self._say(f"\n{name}: stopping after the current step and saving last.pth, then exit status "
                      f"{EXIT_STOPPED} (a second Ctrl-C, {REPEAT_CTRL_C_S:g} s or more later, exits at once "
                      f"without saving)\n")
        else:
            self._say(f"\n{name}: already stopping after the current step ({signal.Signals(self.signal).name})\n")

    def _say(self, text: str) -> None:
        if self.announce:
            _write(text)

    def _leave_closed_terminal(self) -> None:
        """Standard output and error that were a terminal which has hung up go to /dev/null."""
        gone = [fd for fd in self._terminal_fds if not os.isatty(fd)]   # a hung-up terminal is no tty any more
        if not gone:
            return
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in gone:
            os.dup2(null, fd)
        os.close(null)
        self._terminal_fds = [fd for fd in self._terminal_fds if fd not in gone]

    @contextlib.contextmanager
    def handled(self) -> Iterator["StopSignals"]:
        """Route the stop signals to this object inside the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._terminal_fds = [fd for fd in (1, 2) if os.isatty(fd)]
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
