"""predict.py's outputs: masks/<frame>.png (masks/<class>/<frame>.png per class), overlay.mp4 and
predictions.json, all or nothing.

    with PredictionOutputs(out_dir, overwrite=True) as outputs:   # checks, locks, cleans up a crashed run
        ...load the model...
        count = outputs.write(results, fps=fps, meta=lambda: {...})

Nothing is lost, whatever fails (a full disk, EIO, an unreadable frame, Ctrl-C, kill -9):

* the folder is locked (:class:`utils.runlock.RunLock`, file ``.lock``) while a run writes it, so a
  second predict.py into it is refused, naming the first;
* every file goes into a hidden staging folder ``.predict.staging.<token>`` first: masks are
  encoded in memory and written through :func:`utils.fileio.write_file_checked` (a failed or short
  write is a :class:`utils.fileio.WriteError` naming the path and the free space; ``cv2.imwrite``
  would report success for a write that ran out of space) and fsync'ed on threads, the video
  writer is closed, and the sizes are verified;
* only then are the earlier outputs moved aside (``.predict.old.<token>``) and the staged ones
  renamed into place; a failure part-way moves everything back. A kill -9 between those renames
  is finished (staging complete) or rolled back (staging incomplete) by the next run's start,
  which also deletes what a killed run staged; ``--overwrite`` or not (the recovery comes before
  the check that refuses a non-empty folder without ``--overwrite``). Outputs whose swap was
  completed so are the killed run's: the next run replaces them without ``--overwrite`` (once its
  own are written); earlier outputs restored by a roll-back still need ``--overwrite``.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2

from utils.fileio import WriteError, atomic_write_json, free_space, fsync_file, unwritable_reason, write_error, \
    write_file_checked
from utils.runlock import LOCK_FILE, RunLock
from utils.runtime import UserError
from utils.video import VideoWriter
from utils.visualize import tint

__all__ = ["OUTPUT_NAMES", "PredictionOutputs", "check_output_folder", "check_inputs_outside"]

logger = logging.getLogger(__name__)

MASKS, VIDEO, REPORT = "masks", "overlay.mp4", "predictions.json"
OUTPUT_NAMES = (MASKS, VIDEO, REPORT)
STAGING_PREFIX = ".predict.staging."     # + token: the outputs being written
RETIRED_PREFIX = ".predict.old."         # + the same token: the earlier outputs during the swap
LEGACY_STAGING_PREFIX = ".masks.partial."   # what earlier versions staged
COMPLETE_MARKER = ".complete"            # in a staging folder: every output is written and verified
# overlay.mp4: the object in red; with several classes, one colour each, in this order (then again)
CLASS_COLORS_RGB = ((255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220),
                    (255, 120, 0), (140, 90, 40))
FSYNC_THREADS = 4                        # masks flushed to disk in parallel with the segmentation
OWN_NAMES = (LOCK_FILE,)                 # our files that do not make a folder "not empty"
SWAP_COMPLETED = "the outputs of a run that was killed while it swapped them in, completed just now"


def _is_own(name: str) -> bool:
    return name in OWN_NAMES or name.startswith((STAGING_PREFIX, RETIRED_PREFIX, LEGACY_STAGING_PREFIX))


def _dangling_link(out_dir: str) -> "str | None":
    """The dangling symbolic link among --output and its missing parents (the first that exists), else None."""
    path = os.path.abspath(out_dir)
    while not os.path.exists(path):
        if os.path.islink(path):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None


def check_output_folder(out_dir: str, overwrite: bool, recovered: str = "") -> None:
    """Refuse, before any model is loaded, an --output that cannot be written or holds other files
    (`recovered`: what the recovery of a killed run's swap just did, for the refusal)."""
    link = _dangling_link(out_dir)
    if link is not None:
        where = "" if link == os.path.abspath(out_dir) else f" ({link!r}, on its path)"
        raise UserError(f"--output {out_dir!r} is a dangling symbolic link{where}: it points to "
                        f"{os.readlink(link)!r}, which does not exist. Create that folder, remove the link, or "
                        f"choose another --output")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--output {out_dir!r} is a file; expected a folder for masks/, overlay.mp4 and predictions.json")
    reason = unwritable_reason(out_dir)
    if reason:
        raise UserError(f"cannot write into --output {out_dir!r}: {reason}")
    existing = sorted(n for n in os.listdir(out_dir) if not _is_own(n)) if os.path.isdir(out_dir) else []
    if existing and not overwrite:
        raise UserError(f"--output {out_dir!r} is not empty ({', '.join(existing[:5])}{', ...' if len(existing) > 5 else ''}"
                        f"{f'; {recovered}' if recovered else ''}); "
                        f"pass --overwrite to replace an earlier run's outputs, or choose an empty folder")


def check_inputs_outside(out_dir: str, inputs: Mapping[str, Sequence[str]]) -> None:
    """Refuse inputs (``{option: paths}``: the video, the supports) that lie among the outputs a run in
    ``out_dir`` writes and replaces (masks/, overlay.mp4, predictions.json): the swap would delete them."""
    outputs = [os.path.realpath(os.path.join(out_dir, name)) for name in OUTPUT_NAMES]
    for option, paths in inputs.items():
        for path in paths:
            real = os.path.realpath(path)
            for output in outputs:
                if real == output or real.startswith(output + os.sep):
                    raise UserError(f"{option} {path!r} is among the outputs that a run into --output {out_dir!r} "
                                    f"replaces ({os.path.relpath(output, os.path.realpath(out_dir))}); copy it out "
                                    f"of there first, or choose another --output")


def class_color(number: int) -> Tuple[int, int, int]:
    """The overlay colour (RGB) of the class given in position ``number`` (0: red)."""
    return CLASS_COLORS_RGB[number % len(CLASS_COLORS_RGB)]


def _checked(path: str, call: Callable, *args, **kwargs):
    """``call(*args, **kwargs)`` of the video writer; a failed write (PyAV's OSError) becomes a WriteError."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - only write failures are translated
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from None


def _move(source: str, target: str) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        raise write_error(target, exc) from None


class PredictionOutputs:
    """The output folder of one predict.py run (see the module docstring)."""

    def __init__(self, out_dir: str, *, overwrite: bool, inputs: Optional[Mapping[str, Sequence[str]]] = None):
        self.out_dir = os.fspath(out_dir)
        self.overwrite = overwrite
        self.inputs = dict(inputs or {})          # {option: paths} read by the run: never among its outputs
        self._created = not os.path.exists(self.out_dir)
        self._lock = RunLock(self.out_dir, label=f"--output {self.out_dir!r}",
                             advice="Wait for that run to finish or stop it, or choose another --output.")

    # ------------------------------------------------------------ start and end
    def __enter__(self) -> "PredictionOutputs":
        # before the lock creates the folder; a swap that a killed run left half done is recovered
        # (under the lock) before the folder's emptiness is judged, --overwrite or not
        check_output_folder(self.out_dir, self.overwrite or self._swap_interrupted())
        check_inputs_outside(self.out_dir, self.inputs)
        try:
            self._lock.acquire()
        except OSError as exc:       # e.g. a full disk while the lock writes its record
            self._remove_created_folder()
            raise write_error(self._lock.path, exc) from None
        try:
            recovered = self._recover()
            # Outputs whose swap the recovery just completed are those of the killed run, which this
            # run (most often the same command again) may replace: only once it has written and
            # verified its own, so they are never lost. Earlier outputs restored by a roll-back are
            # someone's finished work: they still need --overwrite.
            replaceable = self.overwrite or recovered == SWAP_COMPLETED
            if replaceable and not self.overwrite:
                logger.warning("%s: this run replaces the outputs of the run that was killed while it swapped them "
                               "in (completed just now) once its own are written", self.out_dir)
            check_output_folder(self.out_dir, replaceable, recovered)   # what a crashed run's swap left counts too
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._release()

    def _swap_interrupted(self) -> bool:
        try:
            return any(name.startswith(RETIRED_PREFIX) for name in os.listdir(self.out_dir))
        except OSError:
            return False

    def _remove_created_folder(self) -> None:
        """After a failed start: the folder this run created goes, if nothing but the lock file is in it."""
        if not self._created:
            return
        try:
            if os.listdir(self.out_dir) == [LOCK_FILE]:
                os.unlink(self._lock.path)
            os.rmdir(self.out_dir)
        except OSError:
            pass

    def _release(self) -> None:
        """Release the lock; a folder this run created and left empty goes (the lock file last, still held)."""
        try:
            only_the_lock = os.listdir(self.out_dir) == [LOCK_FILE]
        except OSError:
            only_the_lock = False
        if self._created and self._lock.held and only_the_lock:
            os.unlink(self._lock.path)
            self._lock.release()
            try:
                os.rmdir(self.out_dir)
            except OSError:          # another run started there meanwhile
                pass
            return
        self._lock.release()

    def _recover(self) -> str:
        """Finish or roll back a swap that a killed run left half done; delete what killed runs staged.
        Returns what was done to the outputs ("" if nothing)."""
        done = ""
        names = os.listdir(self.out_dir)
        for name in names:
            if not name.startswith(RETIRED_PREFIX):
                continue
            retired = os.path.join(self.out_dir, name)
            staging = os.path.join(self.out_dir, STAGING_PREFIX + name[len(RETIRED_PREFIX):])
            if os.path.isfile(os.path.join(staging, COMPLETE_MARKER)):
                self._swap_in(staging, retired)
                done = SWAP_COMPLETED
                logger.warning("%s: finished replacing the outputs (a run was killed while it swapped them in)",
                               self.out_dir)
            else:
                self._restore(retired)
                done = "the earlier outputs, restored just now from a run that was killed while it swapped them out"
                logger.warning("%s: restored the earlier outputs (a run was killed while it swapped them out)",
                               self.out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        for name in os.listdir(self.out_dir):
            if name.startswith((STAGING_PREFIX, LEGACY_STAGING_PREFIX)):
                shutil.rmtree(os.path.join(self.out_dir, name), ignore_errors=True)
                logger.info("removed %s (the unfinished outputs of a run that was killed)", name)
        return done

    # ------------------------------------------------------------ writing
    def write(self, results: Iterable, *, fps: float, meta: Callable[[], Mapping[str, Any]],
              classes: Optional[Sequence[str]] = None) -> int:
        """Stream ``results`` into masks/, overlay.mp4 (H.264) and predictions.json, replacing the
        earlier outputs only once all are written; returns the number of frames.

        ``results``: FrameResults with frames, or with ``classes`` (names) one dict {name:
        FrameResult} per frame: then masks/<name>/<frame>.png, one colour per class in the
        overlay (:data:`CLASS_COLORS_RGB`, in order) and predictions.json's ``classes[name]``
        gets the class's ``color`` and ``frames``. ``meta()`` gives predictions.json's other
        fields (with ``classes``: a ``classes`` mapping of each class's own fields), asked for
        once every frame is read. WriteError for a failed write (the earlier outputs stay as they were)."""
        token = secrets.token_hex(4)
        staging = os.path.join(self.out_dir, STAGING_PREFIX + token)
        try:
            try:
                os.mkdir(staging)
                os.mkdir(os.path.join(staging, MASKS))        # the umask's mode, like every other output
                for name in classes or ():
                    os.mkdir(os.path.join(staging, MASKS, name))
            except OSError as exc:
                raise write_error(staging, exc) from None
            count = self._write_staged(staging, results, fps, meta, classes)
            self._swap_in(staging, os.path.join(self.out_dir, RETIRED_PREFIX + token))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return count

    def _write_staged(self, staging: str, results: Iterable, fps: float, meta: Callable[[], Mapping[str, Any]],
                      classes: Optional[Sequence[str]]) -> int:
        # The masks are fsync'ed on threads while the next frames are segmented (~5-9 ms each on
        # a local disk); their failures surface below, before anything is swapped in.
        with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as flusher:
            flushes: List[Future] = []
            count, sizes, writer = self._write_frames(staging, results, fps, meta, classes, flusher, flushes)
            for flush in flushes:
                flush.result()                    # WriteError naming the mask whose fsync failed
        self._verify(staging, sizes, frames=count, video_frames=None if writer is None else writer.frames_written)
        write_file_checked(os.path.join(staging, COMPLETE_MARKER), b"")
        return count

    def _write_frames(self, staging: str, results: Iterable, fps: float, meta: Callable[[], Mapping[str, Any]],
                      classes: Optional[Sequence[str]], flusher: ThreadPoolExecutor, flushes: List[Future]):
        writer, sizes, count = None, {}, 0
        records: Dict[Optional[str], list] = {name: [] for name in (classes or [None])}
        video_path = os.path.join(staging, VIDEO)
        try:
            for frame_results in results:
                by_class = frame_results if classes is not None else {None: frame_results}
                frame = next(iter(by_class.values())).frame
                if writer is None:
                    writer = _checked(video_path, VideoWriter.open, video_path, fps=fps, size=frame.shape[:2])
                overlay = frame
                for number, (name, result) in enumerate(by_class.items()):
                    folder = os.path.join(staging, MASKS) if name is None else os.path.join(staging, MASKS, name)
                    sizes.update(self._write_mask(os.path.join(folder, f"{result.name}.png"), result.mask,
                                                  flusher, flushes))
                    overlay = tint(overlay, result.mask, class_color(number))
                    records[name].append({"frame": result.name, "score": result.score,
                                          "object_fraction": float(result.mask.mean())})
                _checked(video_path, writer.write, overlay)
                count += 1
            if writer is not None:
                _checked(video_path, writer.close)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        report = dict(meta())
        if classes is None:
            report["frames"] = records[None]
        else:
            report["classes"] = {name: {**report.get("classes", {}).get(name, {}), "color": list(class_color(number)),
                                        "frames": records[name]} for number, name in enumerate(classes)}
        atomic_write_json(os.path.join(staging, REPORT), report)
        return count, sizes, writer

    @staticmethod
    def _write_mask(path: str, mask, flusher: ThreadPoolExecutor, flushes: List[Future]) -> Dict[str, int]:
        """One 0/1 mask as a 0/255 PNG (fsync'ed on a thread); {path: its size} for the verification."""
        ok, encoded = cv2.imencode(".png", mask * 255)
        if not ok:  # pragma: no cover - PNG encoding of a uint8 array does not fail
            raise UserError(f"cannot encode the mask {path!r} as PNG")
        write_file_checked(path, encoded.tobytes(), fsync=False)
        flushes.append(flusher.submit(fsync_file, path))
        return {path: len(encoded)}

    @staticmethod
    def _verify(staging: str, sizes: Mapping[str, int], *, frames: int, video_frames) -> None:
        """Every staged file is there with its size, and the video holds every frame."""
        short: List[str] = [f"{path} ({os.path.getsize(path) if os.path.exists(path) else 'missing'} of {size} bytes)"
                            for path, size in sizes.items()
                            if not os.path.exists(path) or os.path.getsize(path) != size]
        video = os.path.join(staging, VIDEO)
        if frames and (not os.path.isfile(video) or os.path.getsize(video) == 0 or video_frames != frames):
            short.append(f"{video} ({video_frames} of {frames} frames)")
        if short:
            raise WriteError(errno.EIO, f"cannot write the outputs: {', '.join(short[:3])} "
                                        f"({free_space(staging)})")

    def _swap_in(self, staging: str, retired: str) -> None:
        """Move the earlier outputs into ``retired``, then the staged ones into place; undone on failure."""
        moved_out, moved_in = [], []
        try:
            os.makedirs(retired, exist_ok=True)
            for name in OUTPUT_NAMES:
                if os.path.lexists(os.path.join(self.out_dir, name)) and os.path.lexists(os.path.join(staging, name)):
                    _move(os.path.join(self.out_dir, name), os.path.join(retired, name))
                    moved_out.append(name)
            for name in OUTPUT_NAMES:
                if os.path.lexists(os.path.join(staging, name)):
                    _move(os.path.join(staging, name), os.path.join(self.out_dir, name))
                    moved_in.append(name)
        except BaseException:
            for name in moved_in:
                os.replace(os.path.join(self.out_dir, name), os.path.join(staging, name))
            for name in moved_out:
                os.replace(os.path.join(retired, name), os.path.join(self.out_dir, name))
            shutil.rmtree(retired, ignore_errors=True)
            raise
        shutil.rmtree(retired, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)

    def _restore(self, retired: str) -> None:
        for name in OUTPUT_NAMES:
            source = os.path.join(retired, name)
            if os.path.lexists(source) and not os.path.lexists(os.path.join(self.out_dir, name)):
                os.replace(source, os.path.join(self.out_dir, name))
