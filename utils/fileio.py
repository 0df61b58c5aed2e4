"""Atomic file writes: a reader never sees a truncated or half-written file.

The data goes to a temporary file in the destination's directory, is flushed and
fsync'ed, then ``os.replace``d onto the destination (atomic on POSIX and Windows), and
the directory entry is fsync'ed. If anything fails (including a kill -9 between the
steps) the destination keeps its previous content and the temporary file is removed
(or, after a hard kill, left as a hidden ``.<name>.tmp*`` file that is never read).

Every failed or short write (a full disk, EIO, a quota) raises :class:`WriteError`, an
``OSError`` whose message names the destination and the free space left there (on a read-only
file system: that it is one, where free space and permissions do not matter); the scripts
report it as one ``error:`` line with exit status 2 (vipmt.cli.user_error_types). Other
OSErrors of the storage or its permissions that reach a script's boundary are described by
:func:`describe_os_error` (utils.runtime.run_cli).
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
from typing import Any, Callable

from .tempnames import temp_path as _temp_path

__all__ = ["WriteError", "write_error", "free_space", "write_file_checked", "fsync_file", "atomic_copy", "atomic_write",
           "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "unwritable_reason", "unreadable_reason", "read_only_mount", "describe_os_error", "failure_reason",
           "STORAGE_ERRNOS"]

# OSErrors that come from the storage or its permissions, not from the code: a script reports them
# as one ``error:`` line (utils.runtime.run_cli) instead of a traceback.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES,
                            errno.EPERM, errno.ESTALE, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE})
# those after which the free space is worth naming
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})

class WriteError(OSError):
    """A write that failed or came up short; the message names the path and the free space there."""

    def __str__(self) -> str:           # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror or super().__str__()


def _existing(path: str) -> str:
    """``path`` made absolute, or its nearest existing parent."""
    place = os.path.abspath(path)
    while not os.path.exists(place):
        place = os.path.dirname(place)
    return place


def _mount_point(place: str) -> str:
    mount = place
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return mount


def free_space(path: str) -> str:
    """'<n> free on <mount point>' for the file system holding ``path`` (or its nearest existing parent)."""
    place = _existing(path)
    try:
        free = shutil.disk_usage(place).free
    except OSError:  # pragma: no cover - e.g. a path that vanished meanwhile
        return "free space unknown"
    return f"{_human_bytes(free)} free on {_mount_point(place)}"


def read_only_mount(path: str) -> "str | None":
    """The mount point of the file system holding ``path`` (or its nearest existing parent) when that
    file system is mounted read-only, else None. No chmod helps there, only another location."""
    place = _existing(path)
    try:
        read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return None
    return _mount_point(place) if read_only else None


def _human_bytes(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"  # pragma: no cover


def _os_error_in(exc: BaseException) -> "OSError | None":
    """``exc`` or the OSError that caused it (torch.save wraps a failed write in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(path: str, exc: BaseException) -> "WriteError | None":
    """The WriteError for a failed write of ``path`` (``exc`` or its cause is an OSError), else None."""
    if isinstance(exc, WriteError):
        return exc
    cause = _os_error_in(exc)
    if cause is None:
        if isinstance(exc, RuntimeError) and "enforce fail at inline_container" in str(exc):
            # torch.save's zip writer reports a failed write like this, without its OSError
            return WriteError(errno.EIO, f"cannot write {path!r}: the write failed ({free_space(path)})")
        return None
    return WriteError(cause.errno, f"cannot write {path!r}: {failure_reason(path, cause)}")


def failure_reason(path: str, cause: OSError) -> str:
    """What went wrong with ``path``: the system's words, then the free space (a full disk, a quota,
    EIO) or, on a read-only file system, that it is one (free space and permissions do not matter)."""
    reason = cause.strerror or str(cause)
    mount = read_only_mount(path) if cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else None
    if cause.errno == errno.EROFS or mount is not None:
        return (f"the file system at {mount or _mount_point(_existing(path))} is mounted read-only; "
                f"choose a location on another file system")
    if cause.errno in _SPACE_ERRNOS or cause.errno not in STORAGE_ERRNOS:
        return f"{reason} ({free_space(path)})"
    return reason


def describe_os_error(exc: OSError) -> "str | None":
    """One line for an OSError of the storage or its permissions (:data:`STORAGE_ERRNOS`) that reached a
    script's boundary, naming the file (or, without one, where it was raised); None for other errors."""
    if isinstance(exc, WriteError):
        return str(exc)
    if exc.errno not in STORAGE_ERRNOS:
        return None
    if isinstance(exc.filename, (str, bytes)):
        path = os.fsdecode(exc.filename)
        return f"{path!r}: {failure_reason(path, exc)}"
    import traceback  # noqa: WPS433 - only on this path

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (in {frames[-1].filename}:{frames[-1].lineno}, {frames[-1].name})" if frames else ""
    return f"{exc.strerror or exc}{where}"


def write_file_checked(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a new file ``path`` (not atomically: for files inside a staging folder) and
    verify its size; WriteError on any failure or short write. The file is fsync'ed (``fsync=False``:
    the caller calls :func:`fsync_file` later, e.g. on a thread), so a full disk that the file
    system reports only when it allocates the blocks is caught too."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        size = os.path.getsize(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    if size != len(data):
        raise WriteError(errno.EIO, f"cannot write {path!r}: {size} of {len(data)} bytes written ({free_space(path)})")


def fsync_file(path: str) -> None:
    """Flush a written file to disk (fsync works on any descriptor of the file); WriteError on failure."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None


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
    mount = read_only_mount(path)
    if mount is not None:           # no permission helps there
        return f"{path!r} is on a read-only file system (mounted read-only at {mount}): nothing can be written there"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"no permission to create files in {path!r}"
    return None


def unreadable_reason(path: str) -> "str | None":
    """Why ``path`` cannot be read as a regular file (words that follow its name: "does not exist", "is a
    named pipe (FIFO) ..."), or None when it is one (or a symbolic link to one).

    Checked before a file is opened: opening a named pipe waits for a writer forever (cv2.imread,
    PIL and torch.load would hang), a device reads without end, and a symbolic link that loops or
    points nowhere looks like a missing file to ``os.path.exists``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops (it leads back to itself)"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file: reading it would wait for a writer"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


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
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = _create_temp(directory, os.path.basename(path))
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            written = f.tell()
        if os.path.getsize(tmp) != written:
            raise WriteError(errno.EIO, f"cannot write {path!r}: {os.path.getsize(tmp)} of {written} bytes "
                             f"reached the disk ({free_space(path)})")
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        error = write_error(path, exc) if isinstance(exc, Exception) else None
        if error is not None and error is not exc:
            raise error from None
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
    """``torch.save(obj, path)`` atomically (WriteError when the disk is full: torch.save reports a
    failed write as a RuntimeError, which the checked write turns into one)."""
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
