"""Atomic file writes: a reader never sees a truncated or half-written file.

The data goes to a temporary file in the destination's directory, is flushed and
fsync'ed, then ``os.replace``d onto the destination (atomic on POSIX and Windows), and
the directory entry is fsync'ed. If anything fails (including a kill -9 between the
steps) the destination keeps its previous content and the temporary file is removed
(or, after a hard kill, left as a hidden ``.<name>.tmp*`` file that is never read).
"""
from __future__ import annotations

import io
import json
import os
import shutil
from typing import Any, Callable

from .tempnames import remove_temporaries
from .tempnames import temp_path as _temp_path

__all__ = ["atomic_copy", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "remove_stale_temporaries", "unwritable_reason"]

def remove_stale_temporaries(directory: str) -> list:
    """Delete the temporaries that writes killed mid-way (kill -9) left in `directory`; returns their names.

    A write in progress looks exactly like an interrupted one, so this runs only under the
    directory's run lock (:mod:`utils.runlock`): the one this process holds, else one taken for
    the moment of the deletion, which is refused (RunLockError, naming the holder's pid and
    host) while another process holds it.
    """
    from .runlock import RunLock, held_run_lock  # noqa: WPS433 - runlock imports torch (utils.runtime)

    if held_run_lock(directory) is not None:
        return remove_temporaries(directory)
    with RunLock(directory):
        return remove_temporaries(directory)


def unwritable_reason(directory: str) -> "str | None":
    """Why files cannot be created in ``directory`` (made with its missing parents if need be), or None.

    Looks at the directory, or at its nearest existing parent when it does not exist yet: that
    must be a directory this process may write in. Creates nothing, so a caller can check
    before any work and before any folder appears.
    """
    path = os.path.abspath(directory)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        kind = "a file" if os.path.isfile(path) else "something else"
        return f"{path!r} is {kind}, not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"no permission to create files in {path!r}"
    return None


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _create_temp(directory: str, name: str) -> "tuple[int, str]":
    """A new hidden file next to the destination, with the umask's usual permissions
    (``tempfile.mkstemp`` would make it private, 0600)."""
    for _ in range(100):
        tmp = _temp_path(directory, name)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {os.path.join(directory, name)!r}")


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> str:
    """Call ``write(binary_file)`` on a temp file next to ``path`` and atomically move it there."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any, indent: int | None = 2) -> str:
    """JSON, indented (``indent=None``: compact, for large files)."""
    separators = (",", ":") if indent is None else None
    return atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str, dst: str) -> str:
    """Make ``dst`` an identical file to ``src``, atomically.

    A hard link when the file system allows it (no second copy on disk; replacing ``src``
    later with :func:`atomic_write` does not change ``dst``), else a byte copy.
    """
    directory = os.path.dirname(os.path.abspath(dst))
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_path(directory, os.path.basename(dst))
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as source:
            return atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 16 * 1024 * 1024))
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return dst
