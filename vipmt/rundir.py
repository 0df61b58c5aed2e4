"""What a run directory holds, and the one rule for "a trained run is here".

:func:`run_contents` lists what a run left in ``<output_dir>/<run_name>``: ``last.pth`` (a file,
or a symbolic link to nothing), ``best.pth`` (with its epoch), the periodic ``epoch_NNN.pth``
files and ``metrics.jsonl`` (with its number of epochs). Any one of them means a trained run is
there (:attr:`RunContents.trained`), and only ``last.pth`` that is a file can be continued
(:attr:`RunContents.resumable`). train.py's fresh start and ``--auto-resume``
(:mod:`vipmt.run`) and reproduce.py (:func:`vipmt.reproduce.training_status`) decide with it, so a
trained run is never overwritten or silently restarted: :meth:`RunContents.refusal` says what is
there and what can be done.

What a start writes before training (``config.yaml``, ``train.log``, the ``.lock`` file, an empty
``metrics.jsonl``, ``tb/``) is not a run: a start that died before its first checkpoint can be
retried with the same command.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

from utils.runtime import UserError

from .build import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE

__all__ = ["PERIODIC_CHECKPOINT", "RunContents", "run_contents"]

PERIODIC_CHECKPOINT = re.compile(r"epoch_\d+\.pth")      # written every save_every epochs (vipmt.hooks)


@dataclass(frozen=True)
class RunContents:
    """What :func:`run_contents` found in ``run_dir``."""
    run_dir: str
    last: bool = False                     # last.pth is a file (or a link to one)
    last_problem: Optional[str] = None     # last.pth is there but is no file: what it is instead
    best: bool = False
    best_epoch: Optional[int] = None       # None: unknown (unreadable file)
    periodic: List[str] = field(default_factory=list)      # epoch_NNN.pth, sorted
    metrics_epochs: int = 0                # lines of metrics.jsonl (one per finished epoch)

    @property
    def resumable(self) -> bool:
        """``last.pth`` is there to continue (``--resume``, ``--auto-resume``)."""
        return self.last

    @property
    def trained(self) -> bool:
        """A trained run is here: a start must not write over it."""
        return (self.last or self.last_problem is not None or self.best or bool(self.periodic)
                or self.metrics_epochs > 0)

    def describe(self) -> str:
        """What is here besides a usable last.pth, e.g. ``best.pth (epoch 7), epoch_005.pth and
        metrics.jsonl (7 epochs)``."""
        items = []
        if self.best:
            items.append(BEST_CHECKPOINT + (f" (epoch {self.best_epoch})" if self.best_epoch is not None
                                            else " (unreadable)"))
        if self.periodic:
            items.append(", ".join(self.periodic) if len(self.periodic) <= 3
                         else f"{self.periodic[0]} ... {self.periodic[-1]} ({len(self.periodic)} files)")
        if self.metrics_epochs:
            items.append(f"{METRICS_FILE} ({self.metrics_epochs} epoch{'s' if self.metrics_epochs != 1 else ''})")
        if self.last_problem is not None:
            items.append(f"{LAST_CHECKPOINT}, {self.last_problem}")
        if len(items) > 1:
            return ", ".join(items[:-1]) + " and " + items[-1]
        return items[0] if items else "nothing of a run"

    def refusal(self, what: str, elsewhere: str = "choose another --run-name (or --output-dir)") -> str:
        """The message refusing ``what`` (e.g. "a new run would overwrite them") on a trained run
        without a usable ``last.pth``: what is there and the options (``elsewhere``: how to use
        another directory)."""
        no_last = "" if self.last_problem is not None else f" but no {LAST_CHECKPOINT}"
        resume = ""
        if self.best:
            epoch = f" (epoch {self.best_epoch})" if self.best_epoch is not None else ""
            resume = (f"continue from {BEST_CHECKPOINT}{epoch} with train.py --resume-from "
                      f"{os.path.join(self.run_dir, BEST_CHECKPOINT)}, ")
        options = f"{resume}{elsewhere}, or move these files out of {self.run_dir!r}"
        return (f"run directory {self.run_dir!r} holds {self.describe()}{no_last}: {what}. "
                f"{options[0].upper()}{options[1:]}")


def _checkpoint_epoch(path: str) -> Optional[int]:
    """The ``epoch`` field of a checkpoint (its tensors memory-mapped, not read); None if unreadable."""
    import torch  # noqa: WPS433 - only when a run directory holds best.pth

    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # noqa: BLE001 - any unreadable file is described as such, never raised here
        return None
    return int(epoch) if isinstance(epoch, int) else None


def _metrics_epochs(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def run_contents(run_dir: str) -> RunContents:
    """What ``run_dir`` holds of a run (an empty :class:`RunContents` when it does not exist)."""
    try:
        names = set(os.listdir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return RunContents(run_dir)
    except OSError as exc:
        raise UserError(f"cannot read the run directory {run_dir!r} to see whether a run is there: "
                        f"{exc.strerror or exc}") from None
    last_path = os.path.join(run_dir, LAST_CHECKPOINT)
    last = LAST_CHECKPOINT in names and os.path.isfile(last_path)
    last_problem = None
    if LAST_CHECKPOINT in names and not last:
        if not os.path.exists(last_path):
            last_problem = f"a symbolic link to {os.readlink(last_path)!r}, which does not exist"
        else:
            last_problem = "a directory, not a checkpoint file" if os.path.isdir(last_path) else "not a regular file"
    best_path = os.path.join(run_dir, BEST_CHECKPOINT)
    best = BEST_CHECKPOINT in names and os.path.lexists(best_path)
    return RunContents(run_dir=run_dir, last=last, last_problem=last_problem, best=best,
                       best_epoch=_checkpoint_epoch(best_path) if best else None,
                       periodic=sorted(n for n in names if PERIODIC_CHECKPOINT.fullmatch(n)),
                       metrics_epochs=_metrics_epochs(os.path.join(run_dir, METRICS_FILE)) if METRICS_FILE in names
                       else 0)
