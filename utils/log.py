"""Logging setup for the scripts: console (tqdm-safe) + optional log file.

Libraries only call ``logging.getLogger(__name__)``; the scripts call :func:`setup_logging`
once. On DDP ranks other than 0 only warnings and errors reach the console and no file is
written. A log file that cannot be written (a full disk) costs one warning on stderr, not a
traceback per record, nor one when the file is flushed or closed (replacing the handlers, at
exit); a record logged with ``extra=FILE_ONLY`` goes to the file only (e.g. the
``error:`` line that the scripts' wrapper prints on stderr itself).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from tqdm import tqdm

__all__ = ["setup_logging", "TqdmHandler", "close_file_handlers", "QuietFileHandler", "FILE_ONLY"]

FILE_ONLY = {"file_only": True}      # logger.error(..., extra=FILE_ONLY): not on the console

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


class TqdmHandler(logging.StreamHandler):
    """Writes records through ``tqdm.write`` so progress bars are not torn apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class QuietFileHandler(logging.FileHandler):
    """A log file whose failed writes (ENOSPC, EIO) are reported once on stderr, then skipped.

    A failed write leaves the record in the file's buffer, so flushing and closing the file fail
    again: they are reported the same way (once), never raised.
    """

    _failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._report(sys.exc_info()[1])

    def _report(self, error: "BaseException | None") -> None:
        if not self._failed:
            self._failed = True
            print(f"warning: cannot write the log file {self.baseFilename!r} "
                  f"({getattr(error, 'strerror', None) or error}); its later lines are lost", file=sys.stderr)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as error:
            self._report(error)

    def close(self) -> None:
        try:
            super().close()         # closes the descriptor even when the last flush fails
        except OSError as error:
            self._report(error)


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup_logging(log_file: Optional[str] = None, level: int = logging.INFO, rank: int = 0) -> logging.Logger:
    """Configure the root logger (replacing handlers set by an earlier call) and return it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    console = TqdmHandler(sys.stderr)
    console.setLevel(level if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT if rank == 0 else f"[rank {rank}] " + CONSOLE_FORMAT,
                                           DATE_FORMAT))
    console.addFilter(_not_file_only)
    root.addHandler(console)
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = QuietFileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(file_handler)
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return root


def close_file_handlers(directory: str) -> None:
    """Remove and close the root logger's handlers that write into ``directory`` (before its files go)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and os.path.dirname(handler.baseFilename) == directory:
            root.removeHandler(handler)
            handler.close()
