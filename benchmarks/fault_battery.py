"""A battery of user faults against tiny CPU runs of the real commands, each classified.

    python benchmarks/fault_battery.py                      # every fault (~15-25 min on 2 loaded cores)
    python benchmarks/fault_battery.py --list               # the faults and what each tries
    python benchmarks/fault_battery.py --only seed_huge predict_palette_mask
    python benchmarks/fault_battery.py --json out.json      # the table as JSON too

Every fault runs a real command (train.py, test.py, predict.py, reproduce.py, python -m
vipmt.export / dataset.check / synthetic / models.check_weights, or a Python API snippet) in a
subprocess on tiny fixtures (a 4-class 64x64 synthetic YouTube-VIS set, a one-epoch run trained
with ``--backbone-weights none``, its exports, frames, a video, supports), built once under
``--work`` and reused. Each outcome is classified from the exit status, stderr and file hashes:

    OK              one clear ``error:`` line naming the file or value (exit 2), or handled correctly
    LOSS            earlier outputs or trained runs changed or lost
    SILENT          a wrong result or an ignored setting without a word
    HANG            no end within the fault's time limit
    TRACEBACK       a Python traceback reached the user
    VAGUE           an error that does not name the file/value or what is expected
    WRONG_REFUSAL   a valid input refused

The order of the checks: HANG, TRACEBACK, LOSS, then what the fault expects. Mounting (read-only
bind mounts, tmpfs) needs root; those faults are SKIPPED elsewhere. docs/reliability.md lists
the faults handled; this battery is how the faults not listed there were found.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
IMAGE = 64
TINY = ["image_size=64,64", "query_frames=3", "clip_length=1", "memory_size=1", "episodes_per_class=1",
        "val_episodes_per_class=1", "val_batch_size=1", "num_workers=0", "epochs=1", "batch_size=1",
        "checkpoint_every_iters=0"]
TINY2 = [item for item in TINY if not item.startswith("epochs=")] + ["epochs=2"]     # one epoch more
CLASSES = ("OK", "LOSS", "SILENT", "HANG", "TRACEBACK", "VAGUE", "WRONG_REFUSAL", "SKIPPED")
TRACEBACK_MARK = "Traceback (most recent call last)"
BIG_FILE = 64 << 20          # larger files are compared by inode, size, mtime and their first and last MiB


# ---------------------------------------------------------------------------- running commands
@dataclass
class Result:
    argv: List[str]
    rc: Optional[int]
    out: str
    err: str
    seconds: float
    timed_out: bool
    signalled: bool = False          # the signal_on trigger fired (and the signal was sent)

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    def error_lines(self) -> List[str]:
        """``error: ...`` lines, argparse's ``prog: error: ...`` included."""
        return [line for line in self.err.splitlines()
                if line.startswith("error: ") or (": error: " in line and not line.startswith(" "))]


def run(argv: Sequence[str], *, env: Optional[Dict[str, str]] = None, timeout: float = 150, cwd: str = REPO,
        signal_on: Optional[Callable[["subprocess.Popen", str], bool]] = None, signum: int = signal.SIGTERM,
        python: bool = True) -> Result:
    """Run ``python argv`` (or ``argv``); ``signal_on(proc, output so far)`` returning True sends ``signum`` once."""
    command = [PYTHON, *map(str, argv)] if python else list(map(str, argv))
    environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        environment.pop(name, None)
    environment.update(env or {})
    started = time.time()
    proc = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_sigint)
    chunks: Dict[str, List[bytes]] = {"out": [], "err": []}

    def pump(stream, key):
        for line in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
            chunks[key].append(line)

    readers = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for reader in readers:
        reader.start()
    sent, timed_out = signal_on is None, False
    while proc.poll() is None:
        if time.time() - started > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if not sent:
            so_far = b"".join(chunks["out"] + chunks["err"]).decode("utf-8", "replace")
            if signal_on(proc, so_far):
                proc.send_signal(signum)
                sent = True
        time.sleep(0.05)
    proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    decode = lambda key: b"".join(chunks[key]).decode("utf-8", "replace")  # noqa: E731
    return Result([str(a) for a in argv], proc.returncode, decode("out"), decode("err"),
                  round(time.time() - started, 1), timed_out, signalled=signal_on is not None and sent)


def _default_sigint() -> None:
    """In the child: SIGINT back to its default (a battery started in the background, e.g. with nohup or
    `&`, ignores it, and Python keeps an ignored SIGINT ignored: Ctrl-C faults would test nothing)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def opened(path: str) -> Callable[["subprocess.Popen", str], bool]:
    """A signal_on trigger: the process has ``path`` open (found in /proc/<pid>/fd)."""
    target = os.path.realpath(path)

    def check(proc, _output):
        try:
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{proc.pid}/fd")):
                return True
            with open(f"/proc/{proc.pid}/maps") as maps:         # a file mapped (torch.load(mmap=True))
                return target in maps.read()
        except OSError:
            return False
    return check


def printed(text: str, delay: float = 0.0) -> Callable[["subprocess.Popen", str], bool]:
    """A signal_on trigger: ``text`` appeared in the output (then ``delay`` seconds more)."""
    seen: List[float] = []

    def check(_proc, output):
        if text in output and not seen:
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= delay
    return check


# ---------------------------------------------------------------------------- what must not change
def _file_state(path: str):
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= BIG_FILE:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            return ("sha256", digest.hexdigest())
        digest.update(f.read(1 << 20))
        f.seek(-(1 << 20), os.SEEK_END)
        digest.update(f.read())
    return ("stat", st.st_ino, st.st_size, st.st_mtime_ns, digest.hexdigest())


def snapshot(*paths: str) -> Dict[str, object]:
    """{file: state} of every file under ``paths`` (files or folders)."""
    state: Dict[str, object] = {}
    for path in paths:
        if os.path.isfile(path):
            state[path] = _file_state(path)
        elif os.path.isdir(path):
            for folder, _, files in os.walk(path):
                for name in files:
                    full = os.path.join(folder, name)
                    if os.path.isfile(full) and not os.path.islink(full) and not name.endswith(".lock"):
                        state[full] = _file_state(full)
    return state


def changed(before: Dict[str, object]) -> List[str]:
    """The files of ``before`` that are gone or differ now."""
    lost = []
    for path, state in before.items():
        if not os.path.isfile(path):
            lost.append(f"{path} (gone)")
        elif _file_state(path) != state:
            lost.append(f"{path} (changed)")
    return lost


# ---------------------------------------------------------------------------- verdicts
@dataclass
class Verdict:
    cls: str
    detail: str


@dataclass
class Fault:
    name: str
    what: str
    function: Callable[["Case"], Verdict]
    slow: bool = False


FAULTS: List[Fault] = []


def fault(name: str, what: str, slow: bool = False):
    def register(function):
        FAULTS.append(Fault(name, what, function, slow))
        return function
    return register


class Skip(Exception):
    """The fault cannot be tried here (e.g. no permission to mount)."""


def _first(lines: Sequence[str]) -> str:
    return lines[0] if lines else ""


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _generic(res: Result, guard: Optional[Dict[str, object]]) -> Optional[Verdict]:
    if res.timed_out:
        return Verdict("HANG", f"no end after {res.seconds:.0f} s; last output: {_short(res.text[-300:])}")
    if TRACEBACK_MARK in res.text:
        tail = [line for line in res.text.splitlines() if line.strip()][-1:]
        return Verdict("TRACEBACK", _short(" ".join(tail)))
    if guard is not None:
        lost = changed(guard)
        if lost:
            return Verdict("LOSS", ", ".join(lost[:4]))
    return None


def expect_report(res: Result, names: Sequence[str] = ()) -> Verdict:
    """python -m dataset.check's format: one ``path: reason`` line per bad file, a count, exit 2."""
    verdict = _generic(res, None)
    if verdict:
        return verdict
    if res.rc == 0:
        return Verdict("SILENT", f"exit 0: {_short(res.text[-240:])}")
    missing = [n for n in names if not any(alt.lower() in res.text.lower() for alt in n.split("|"))]
    if res.rc != 2 or missing:
        return Verdict("VAGUE", f"exit {res.rc}, does not name {missing}: {_short(res.text[-240:])}")
    line = next((l for l in res.text.splitlines() if all(any(a.lower() in l.lower() for a in n.split("|"))
                                                          for n in names)), "")
    return Verdict("OK", _short(line))


def expect_error(res: Result, names: Sequence[str] = (), guard=None, also: Callable[[], Optional[str]] = None,
                 accepted_marker: str = "") -> Verdict:
    """Bad input: exit 2 and one error line naming each of ``names`` (case-insensitive; an entry
    'a|b' accepts either); ``also()``: a further condition (a reason when it fails: SILENT);
    ``accepted_marker``: text of a later error that shows the bad input was taken (SILENT)."""
    verdict = _generic(res, guard)
    if verdict:
        return verdict
    lines = res.error_lines()
    if res.rc == 0:
        return Verdict("SILENT", f"accepted (exit 0): {_short(res.text[-240:])}")
    if res.rc != 2 or not lines:
        return Verdict("VAGUE", f"exit {res.rc} without an error: line: {_short(res.err[-240:])}")
    line = lines[-1]
    listing = res.err[res.err.rfind(line):]          # the error line and the lines it lists after it
    if accepted_marker and accepted_marker in line:
        return Verdict("SILENT", f"accepted (the run went on to: {_short(line, 160)})")
    missing = [n for n in names if not any(alt.lower() in listing.lower() for alt in n.split("|"))]
    if missing:
        return Verdict("VAGUE", f"does not name {missing}: {_short(line)}")
    if also is not None:
        reason = also()
        if reason:
            return Verdict("SILENT", reason)
    return Verdict("OK", _short(line))


def expect_success(res: Result, check: Callable[[], Optional[str]] = None, guard=None) -> Verdict:
    """Valid input: exit 0 and ``check()`` None (else its reason: SILENT); an error: WRONG_REFUSAL."""
    verdict = _generic(res, guard)
    if verdict:
        return verdict
    if res.rc != 0:
        return Verdict("WRONG_REFUSAL", f"exit {res.rc}: {_short(_first(res.error_lines()) or res.err[-240:])}")
    reason = check() if check else None
    if reason:
        return Verdict("SILENT", reason)
    return Verdict("OK", "handled")


def expect_either(res: Result, names: Sequence[str] = (), check: Callable[[], Optional[str]] = None,
                  guard=None) -> Verdict:
    """Either handled (exit 0 and ``check()`` None) or refused clearly (exit 2 naming ``names``)."""
    if res.rc == 0 and not res.timed_out:
        return expect_success(res, check, guard)
    return expect_error(res, names, guard)


def expect_stopped(res: Result, guard=None, statuses=(75, 130, 143, -signal.SIGTERM, -signal.SIGINT),
                   also: Callable[[], Optional[str]] = None) -> Verdict:
    """A signal: the process ends (a status of ``statuses``) without a traceback, nothing lost."""
    if not res.signalled and not res.timed_out:
        return Verdict("SKIPPED", f"the signal's trigger never fired (exit {res.rc}); rerun it")
    verdict = _generic(res, guard)
    if verdict:
        return verdict
    if res.rc not in statuses:
        return Verdict("SILENT" if res.rc == 0 else "VAGUE", f"exit {res.rc}: {_short(res.err[-240:])}")
    reason = also() if also else None
    if reason:
        return Verdict("LOSS", reason)
    return Verdict("OK", f"exit {res.rc}; {_short(_first(res.error_lines()) or res.err.strip().splitlines()[-1] if res.err.strip() else '')}")


def api(code: str, *, timeout: float = 150, env=None) -> Result:
    """Run a Python API snippet (the fixtures' names are globals: EXPORT, FRAMES, SUP_IMG, SUP_MASK ...).
    It prints ``RESULT <json>`` when it ends as it should, or lets an exception through."""
    prologue = textwrap.dedent(f"""
        import json, os, sys, numpy as np
        sys.path.insert(0, {REPO!r})
        from vipmt import Predictor, VIPMTError
        FX = json.loads({json.dumps(json.dumps(FIXTURES))})
        globals().update({{k.upper(): v for k, v in FX.items()}})
        def result(**fields):
            print("RESULT " + json.dumps(fields))
    """)
    return run(["-c", prologue + textwrap.dedent(code)], timeout=timeout, env=env)


def api_refuses(code: str, **options) -> Result:
    """``api(code)`` for a snippet that should raise VIPMTError: it reports ``result(error=str(e))``, or
    ``result(done=True)`` when nothing was raised."""
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    return api(f"try:\n{body}\n    result(done=True)\nexcept VIPMTError as e:\n    result(error=str(e))\n", **options)


def api_result(res: Result) -> Optional[dict]:
    for line in res.out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def expect_api_error(res: Result, names: Sequence[str] = ()) -> Verdict:
    """The snippet catches VIPMTError and reports result(error=str(e)); anything else is classified."""
    verdict = _generic(res, None)
    if verdict:
        return verdict
    found = api_result(res)
    if found is None:
        return Verdict("VAGUE", f"exit {res.rc}: {_short(res.err[-240:])}")
    if "error" not in found:
        return Verdict("SILENT", f"no error: {_short(json.dumps(found))}")
    missing = [n for n in names if not any(alt.lower() in found["error"].lower() for alt in n.split("|"))]
    if missing:
        return Verdict("VAGUE", f"does not name {missing}: {_short(found['error'])}")
    return Verdict("OK", _short(found["error"]))


# ---------------------------------------------------------------------------- fixtures
FIXTURES: Dict[str, str] = {}


def _write_png(path: str, array) -> str:
    import cv2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array):
        raise RuntimeError(f"cannot write {path}")
    return path


def _disk_frame(shift: int = 0, size: int = IMAGE):
    """An RGB-ish frame with a bright disk (BGR for cv2.imwrite) and its 0/255 mask."""
    import cv2
    import numpy as np

    frame = np.full((size, size, 3), 40, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    center = (size // 2 + shift - 4, size // 2)
    cv2.circle(frame, center, size // 5, (30, 200, 240), -1)
    cv2.circle(mask, center, size // 5, 255, -1)
    return frame, mask


def build_fixtures(work: str, fresh: bool) -> None:
    """Everything the faults read, built once under ``work/fixtures`` (``fresh``: rebuilt)."""
    base = os.path.join(work, "fixtures")
    stamp = os.path.join(base, "ready.json")
    if fresh and os.path.isdir(base):
        shutil.rmtree(base)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            FIXTURES.update(json.load(f))
        return
    os.makedirs(base, exist_ok=True)
    fx = {"base": base, "data": os.path.join(base, "data"), "runs": os.path.join(base, "runs")}
    sys.path.insert(0, REPO)
    from synthetic import write_synthetic_youtube_vis

    write_synthetic_youtube_vis(fx["data"], seed=0, videos_per_class=3, frames_per_video=8,
                                frame_size=(IMAGE, IMAGE), num_categories=4)
    fx["data2"] = os.path.join(base, "data2")                     # reproduce.py: 2 classes, 3 frames
    write_synthetic_youtube_vis(fx["data2"], seed=0, videos_per_class=3, frames_per_video=3,
                                frame_size=(IMAGE, IMAGE), num_categories=2)
    print("fixtures: training the tiny run (~30-60 s)", flush=True)
    res = run(["train.py", "--data-root", fx["data"], "--output-dir", fx["runs"], "--run-name", "r1",
               "--backbone-weights", "none", "--device", "cpu", *TINY], timeout=900)
    if res.rc != 0:
        raise SystemExit(f"fixture training failed:\n{res.err[-3000:]}")
    fx["run"] = os.path.join(fx["runs"], "r1")
    fx["best"] = os.path.join(fx["run"], "best.pth")
    fx["last"] = os.path.join(fx["run"], "last.pth")
    fx["export"] = os.path.join(base, "r1_export.pth")
    fx["half"] = os.path.join(base, "r1_half.pth")
    for out, extra in ((fx["export"], []), (fx["half"], ["--half"])):
        res = run(["-m", "vipmt.export", fx["best"], out, *extra], timeout=600)
        if res.rc != 0:
            raise SystemExit(f"fixture export failed:\n{res.err[-3000:]}")
    frames = os.path.join(base, "frames")
    for i in range(6):
        _write_png(os.path.join(frames, f"{i:05d}.jpg"), _disk_frame(i)[0])
    fx["frames"] = frames
    image, mask = _disk_frame(0)
    fx["sup_img"] = _write_png(os.path.join(base, "supports", "s0.jpg"), image)
    fx["sup_mask"] = _write_png(os.path.join(base, "supports", "s0.png"), mask)
    image, mask = _disk_frame(3)
    fx["sup_img2"] = _write_png(os.path.join(base, "supports", "s1.jpg"), image)
    fx["sup_mask2"] = _write_png(os.path.join(base, "supports", "s1.png"), mask)
    from utils.video import VideoWriter

    fx["video"] = os.path.join(base, "video.mp4")
    with VideoWriter.open(fx["video"], fps=10, size=(IMAGE, IMAGE)) as writer:
        for i in range(6):
            writer.write(_disk_frame(i)[0][..., ::-1].copy())
    print("fixtures: a test.py run and a predict.py run", flush=True)
    fx["test_json"] = os.path.join(base, "earlier_test.json")
    res = run(["test.py", "--data-root", fx["data"], "--checkpoint", fx["export"], "--device", "cpu",
               "--output", fx["test_json"], "--backbone-weights", "none", *TINY], timeout=900)
    if res.rc != 0:
        raise SystemExit(f"fixture test failed:\n{res.err[-3000:]}")
    fx["pred_out"] = os.path.join(base, "earlier_predict")
    res = run(["predict.py", *predict_args(fx, fx["pred_out"])], timeout=900)
    if res.rc != 0:
        raise SystemExit(f"fixture predict failed:\n{res.err[-3000:]}")
    with open(stamp, "w") as f:
        json.dump(fx, f, indent=1)
    FIXTURES.update(fx)


def predict_args(fx, output, video=None, *extra, images=None, masks=None, checkpoint=None) -> List[str]:
    return ["--checkpoint", fx["export"] if checkpoint is None else checkpoint, "--video", video or fx["frames"],
            "--support-images", *(images or [fx["sup_img"]]), "--support-masks", *(masks or [fx["sup_mask"]]),
            "--output", output, "--device", "cpu", *extra]


# ---------------------------------------------------------------------------- a case's own folder
class Case:
    def __init__(self, work: str, number: int):
        # numbered, not named: words of a fault's name in its paths would satisfy the message checks
        self.dir = os.path.join(work, "cases", f"{number:03d}")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.fx = FIXTURES
        self.mounts: List[str] = []

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def write(self, name: str, text: str | bytes) -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        return path

    def fifo(self, name: str) -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkfifo(path)
        return path

    def linked_run(self, name: str = "runs", files=("last.pth", "best.pth", "metrics.jsonl", "config.yaml")) -> str:
        """A copy of the fixture run in this case (checkpoints hard-linked: nothing is rewritten in place)."""
        run_dir = self.path(name, "r1")
        os.makedirs(run_dir)
        for file in files:
            source = os.path.join(self.fx["run"], file)
            if file.endswith(".pth"):
                os.link(source, os.path.join(run_dir, file))
            else:
                shutil.copy2(source, os.path.join(run_dir, file))
        return run_dir

    def mount(self, where: str, *options: str, source: Optional[str] = None) -> str:
        os.makedirs(where, exist_ok=True)
        argv = (["mount", "--bind", source, where] if source else ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", where])
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"cannot mount: {done.stderr.strip()}")
        self.mounts.append(where)
        if options:
            done = subprocess.run(["mount", "-o", ",".join(("remount",) + options + (("bind",) if source else ())),
                                   where], capture_output=True, text=True)
            if done.returncode != 0:
                raise Skip(f"cannot remount: {done.stderr.strip()}")
        return where

    def close(self) -> None:
        for where in reversed(self.mounts):
            subprocess.run(["umount", "-l", where], capture_output=True)


# ============================================================================ the faults
# ---- configuration files and values --------------------------------------------------
def _train_until_data(case: Case, *argv: str, env=None) -> Result:
    """train.py with a missing data root: the config is accepted iff the error is about the data."""
    return run(["train.py", "--data-root", case.path("no-data"), "--output-dir", case.path("runs"),
                "--backbone-weights", "none", "--device", "cpu", *argv], env=env, timeout=120)


def _accepted_config(res: Result) -> Verdict:
    verdict = _generic(res, None)
    if verdict:
        return verdict
    line = _first(res.error_lines())
    if res.rc == 2 and "no-data" in line:
        return Verdict("OK", "accepted (the run stops at the missing data root, as arranged)")
    return Verdict("WRONG_REFUSAL", f"exit {res.rc}: {_short(line or res.err[-200:])}")


@fault("config_yaml_exponent", "--config FILE with `lr: 1e-4` (PyYAML reads 1e-4 without a dot as a string)")
def _(case):
    return _accepted_config(_train_until_data(case, "--config", case.write("c.yaml", "lr: 1e-4\nweight_decay: 5e-4\n")))


@fault("config_yaml_duplicate_key", "--config FILE giving `epochs` twice (YAML keeps the last without a word)")
def _(case):
    res = _train_until_data(case, "--config", case.write("c.yaml", "epochs: 1\nlr: 0.001\nepochs: 30\n"))
    return expect_error(res, ["epochs", "c.yaml"], accepted_marker="no-data")


@fault("config_json_duplicate_key", "--config FILE.json giving `lr` twice")
def _(case):
    res = _train_until_data(case, "--config", case.write("c.json", '{"lr": 0.001, "epochs": 2, "lr": 0.1}'))
    return expect_error(res, ["lr", "c.json"], accepted_marker="no-data")


@fault("config_yaml_list", "--config FILE holding a YAML list of mappings")
def _(case):
    return expect_error(_train_until_data(case, "--config", case.write("c.yaml", "- lr: 0.001\n- epochs: 2\n")),
                        ["c.yaml", "mapping"])


@fault("config_nested_mapping", "--config FILE with a nested mapping (optimizer: {lr: 0.1})")
def _(case):
    return expect_error(_train_until_data(case, "--config", case.write("c.yaml", "optimizer:\n  lr: 0.1\n")),
                        ["optimizer"])


@fault("config_other_script_key", "train.py --config FILE holding test.py's options (checkpoint:, runs:)")
def _(case):
    return expect_error(_train_until_data(case, "--config", case.write("c.yaml", "checkpoint: x.pth\nruns: 3\n")),
                        ["checkpoint"])


@fault("config_scalar_for_list", "--config FILE with image_size: 64 (a scalar for a list)")
def _(case):
    return expect_error(_train_until_data(case, "--config", case.write("c.yaml", "image_size: 64\n")), ["image_size"])


@fault("config_fifo", "--config a named pipe (nothing ever writes it)")
def _(case):
    return expect_error(_train_until_data(case, "--config", case.fifo("c.yaml")), ["c.yaml", "not a regular file|pipe|fifo"])


@fault("config_symlink_loop", "--config a symbolic link that points to itself")
def _(case):
    loop = case.path("loop.yaml")
    os.symlink(loop, loop)
    return expect_error(_train_until_data(case, "--config", loop), ["loop.yaml", "link"])


@fault("seed_huge", "train.py seed=99999999999999999999 (beyond 64 bits)")
def _(case):
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--run-name", "x",
               "--backbone-weights", "none", "--device", "cpu", *TINY, "seed=99999999999999999999"], timeout=300)
    return expect_error(res, ["seed"], also=lambda: "a run folder was left" if os.path.exists(case.path("runs", "x", "last.pth")) else None)


@fault("seed_negative", "train.py seed=-1")
def _(case):
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--run-name", "x",
               "--backbone-weights", "none", "--device", "cpu", *TINY, "seed=-1"], timeout=300)
    return expect_either(res, ["seed"], check=lambda: None if os.path.isfile(case.path("runs", "x", "last.pth"))
                         else "no last.pth")


@fault("api_seed_huge", "Predictor.from_checkpoint(..., seed=2**70), then segment")
def _(case):
    return expect_api_error(api_refuses("""
        p = Predictor.from_checkpoint(EXPORT, device="cpu", seed=2**70)
        list(p.segment(FRAMES, [SUP_IMG], [SUP_MASK]))
    """), ["seed"])


@fault("device_mps", "train.py --device mps")
def _(case):
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--device", "mps",
               "--backbone-weights", "none", *TINY], timeout=120)
    return expect_error(res, ["mps"], also=lambda: "a run folder was created" if os.path.exists(case.path("runs")) else None)


@fault("device_cuda_test", "test.py --device cuda on a machine without CUDA")
def _(case):
    out = case.path("t", "r.json")
    res = run(["test.py", "--data-root", case.fx["data"], "--checkpoint", case.fx["export"], "--device", "cuda",
               "--output", out, *TINY], timeout=120)
    if res.rc == 0 and __import__("torch").cuda.is_available():
        return Verdict("SKIPPED", "this machine has CUDA")
    return expect_error(res, ["cuda"], also=lambda: "a results file was written" if os.path.exists(out) else None)


@fault("api_device_cuda3", "Predictor.from_checkpoint(..., device='cuda:3') without such a GPU")
def _(case):
    return expect_api_error(api_refuses("""
        Predictor.from_checkpoint(EXPORT, device="cuda:3")
    """), ["cuda:3"])


@fault("lr_inf", "train.py lr=inf")
def _(case):
    return expect_error(_train_until_data(case, "lr=inf"), ["lr", "inf"])


@fault("stop_after_negative", "train.py --stop-after -5")
def _(case):
    return expect_error(_train_until_data(case, "--stop-after", "-5"), ["stop-after", "-5"])


@fault("test_runs_zero", "test.py --runs 0")
def _(case):
    res = run(["test.py", "--data-root", case.fx["data"], "--checkpoint", case.fx["export"], "--device", "cpu",
               "--output", case.path("r.json"), "--runs", "0", *TINY], timeout=120)
    return expect_error(res, ["test_runs|--runs", "0"])


@fault("test_video_batch_zero", "test.py test_video_batch=0")
def _(case):
    res = run(["test.py", "--data-root", case.fx["data"], "--checkpoint", case.fx["export"], "--device", "cpu",
               "--output", case.path("r.json"), *TINY, "test_video_batch=0"], timeout=120)
    return expect_error(res, ["test_video_batch", "0"])


@fault("predict_memory_threshold_nan", "predict.py memory_threshold=nan")
def _(case):
    res = run(["predict.py", "memory_threshold=nan", *predict_args(case.fx, case.path("out"))])
    return expect_error(res, ["memory_threshold", "nan"])


@fault("predict_huge_clip_length", "predict.py clip_length=100000 (one clip holds the whole 6-frame video)")
def _(case):
    res = run(["predict.py", "clip_length=100000", *predict_args(case.fx, case.path("out"))])
    return expect_success(res, _predicted(case, 6))


@fault("reproduce_fold_zero", "reproduce.py --folds 0")
def _(case):
    return expect_error(run(["reproduce.py", "--folds", "0", "--data-root", case.fx["data2"], "--device", "cpu",
                             "--output-dir", case.path("out"), *TINY], timeout=120), ["0"])


@fault("env_rendezvous_timeout_abc", "VIPMT_RENDEZVOUS_TIMEOUT=abc under a torchrun-like environment")
def _(case):
    env = {"VIPMT_RENDEZVOUS_TIMEOUT": "abc", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561", "TORCHELASTIC_RUN_ID": "battery"}
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--device", "cpu",
               "--backbone-weights", "none", *TINY], env=env, timeout=150)
    return expect_error(res, ["VIPMT_RENDEZVOUS_TIMEOUT", "abc"])


@fault("env_omp_zero", "OMP_NUM_THREADS=0 predict.py (libgomp rejects it)")
def _(case):
    out = case.path("out")
    res = run(["predict.py", *predict_args(case.fx, out)], env={"OMP_NUM_THREADS": "0"})
    return expect_success(res, lambda: None if os.path.isfile(os.path.join(out, "predictions.json")) else "no outputs")


@fault("empty_string_checkpoint", "test.py --checkpoint \"\" (an unset shell variable)")
def _(case):
    out = case.path("r.json")
    res = run(["test.py", "--data-root", case.fx["data"], "--checkpoint", "", "--output", out, "--device", "cpu",
               "--output-dir", case.fx["runs"], "--run-name", "r1", *TINY], timeout=200)
    return expect_error(res, ["--checkpoint"])


@fault("empty_string_output_dir", "train.py --output-dir \"\" (an unset shell variable)")
def _(case):
    res = run(["train.py", "--data-root", case.path("no-data"), "--output-dir", "", "--backbone-weights", "none",
               "--device", "cpu"], timeout=120)
    return expect_error(res, ["output_dir|output-dir"], accepted_marker="no-data")


@fault("empty_string_predict_output", "predict.py --output \"\"")
def _(case):
    return expect_error(run(["predict.py", *predict_args(case.fx, "")]), ["--output"])


# ---- checkpoints of the wrong kind ----------------------------------------------------
def _test_with(case: Case, checkpoint: str, *extra: str, output: Optional[str] = None, timeout: float = 200) -> Result:
    return run(["test.py", "--data-root", case.fx["data"], "--checkpoint", checkpoint, "--device", "cpu",
                "--output", output or case.path("t", "r.json"), *TINY, *extra], timeout=timeout)


@fault("resume_from_export", "train.py --resume-from an exported (weights-only) model")
def _(case):
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--run-name", "x",
               "--backbone-weights", "none", "--device", "cpu", "--resume-from", case.fx["export"], *TINY], timeout=200)
    return expect_error(res, ["r1_export.pth", "resum|weights"])


@fault("resume_from_test_json", "train.py --resume-from a test.py results JSON")
def _(case):
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--run-name", "x",
               "--backbone-weights", "none", "--device", "cpu", "--resume-from", case.fx["test_json"], *TINY], timeout=200)
    return expect_error(res, ["earlier_test.json", "json|not a pytorch|not a checkpoint"])


@fault("test_checkpoint_json", "test.py --checkpoint a results JSON")
def _(case):
    return expect_error(_test_with(case, case.fx["test_json"]), ["earlier_test.json", "json|not a pytorch|not a checkpoint"])


@fault("test_checkpoint_half_export", "test.py --checkpoint an export --half (documented to load)")
def _(case):
    out = case.path("t", "r.json")
    return expect_success(_test_with(case, case.fx["half"], output=out),
                          lambda: None if os.path.isfile(out) else "no results file")


@fault("test_checkpoint_list", "test.py --checkpoint a torch.save of a list")
def _(case):
    import torch

    path = case.path("list.pth")
    torch.save([1, 2, 3], path)
    return expect_error(_test_with(case, path), ["list.pth"])


@fault("test_checkpoint_empty", "test.py --checkpoint an empty file")
def _(case):
    return expect_error(_test_with(case, case.write("empty.pth", b"")), ["empty.pth", "empty"])


@fault("test_checkpoint_zip", "test.py --checkpoint a zip archive that is not a PyTorch file")
def _(case):
    path = case.path("other.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return expect_error(_test_with(case, path), ["other.zip"])


@fault("test_checkpoint_fifo", "test.py --checkpoint a named pipe")
def _(case):
    return expect_error(_test_with(case, case.fifo("ckpt.pth")), ["ckpt.pth", "not a regular file|pipe|fifo"])


@fault("test_checkpoint_dev_null", "test.py --checkpoint /dev/null")
def _(case):
    return expect_error(_test_with(case, "/dev/null"), ["/dev/null", "not a regular file|device|empty"])


@fault("test_output_is_checkpoint", "test.py --output runs/r1/best.pth (the results JSON onto the checkpoint)")
def _(case):
    run_dir = case.linked_run()
    guard = snapshot(run_dir)
    res = _test_with(case, os.path.join(run_dir, "best.pth"), output=os.path.join(run_dir, "best.pth"))
    return expect_error(res, ["best.pth"], guard=guard)


@fault("test_output_is_annotations", "test.py --output the dataset's train.json")
def _(case):
    data = case.path("data")
    shutil.copytree(case.fx["data"], data)
    guard = snapshot(os.path.join(data, "train", "train.json"))
    res = run(["test.py", "--data-root", data, "--checkpoint", case.fx["export"], "--device", "cpu",
               "--output", os.path.join(data, "train", "train.json"), *TINY], timeout=200)
    return expect_error(res, ["train.json"], guard=guard)


@fault("test_output_earlier_results", "test.py --output an earlier results file of test.py (replaced, as asked)")
def _(case):
    out = case.path("t", "r.json")
    os.makedirs(os.path.dirname(out))
    shutil.copy2(case.fx["test_json"], out)
    before = os.stat(out).st_ino
    return expect_success(_test_with(case, case.fx["export"], "--runs", "2", output=out),
                          lambda: None if os.stat(out).st_ino != before else "not replaced")


@fault("test_log_onto_train_log", "test.py --output runs/r1/train.json (its log would be runs/r1/train.log)")
def _(case):
    run_dir = case.linked_run(files=("best.pth", "config.yaml"))
    shutil.copy2(os.path.join(case.fx["run"], "train.log"), os.path.join(run_dir, "train.log"))
    with open(os.path.join(run_dir, "train.log"), "rb") as f:
        before = f.read()
    res = _test_with(case, case.fx["export"], output=os.path.join(run_dir, "train.json"))
    with open(os.path.join(run_dir, "train.log"), "rb") as f:
        if not f.read().startswith(before):
            return Verdict("LOSS", "train.log lost its earlier lines")
    return expect_either(res, ["train.log"],
                         check=lambda: None if os.path.isfile(os.path.join(run_dir, "train.json")) else "no results")


@fault("export_to_directory_missing_parent", "python -m vipmt.export CKPT new/sub/model.pth (parent missing)")
def _(case):
    out = case.path("new", "sub", "model.pth")
    res = run(["-m", "vipmt.export", case.fx["export"], out], timeout=300)
    return expect_either(res, ["new/sub"], check=lambda: None if os.path.isfile(out) else "no file written")


@fault("export_of_test_json", "python -m vipmt.export a results JSON")
def _(case):
    return expect_error(run(["-m", "vipmt.export", case.fx["test_json"], case.path("m.pth")]),
                        ["earlier_test.json", "json|not a pytorch|not a checkpoint"])


@fault("export_of_export_half", "python -m vipmt.export an --half export again, with --half")
def _(case):
    out = case.path("again.pth")
    res = run(["-m", "vipmt.export", case.fx["half"], out, "--half"], timeout=300)
    return expect_either(res, ["r1_half.pth"], check=lambda: None if os.path.isfile(out) else "no file written")


@fault("check_weights_our_checkpoint", "python -m models.check_weights on a VIPMT checkpoint (not a backbone)")
def _(case):
    res = run(["-m", "models.check_weights", case.fx["export"]], timeout=200)
    verdict = _generic(res, None)
    if verdict:
        return verdict
    if res.rc in (1, 2) and "r1_export.pth" in res.err:
        return Verdict("OK", f"exit {res.rc}: {_short(_first(res.error_lines()))}")
    return Verdict("VAGUE" if res.rc else "SILENT", f"exit {res.rc}: {_short(res.err[-240:])}")


@fault("check_weights_fifo", "python -m models.check_weights on a named pipe")
def _(case):
    return expect_error(run(["-m", "models.check_weights", case.fifo("w.pth")], timeout=60),
                        ["w.pth", "not a regular file|pipe|fifo"])


@fault("check_weights_directory", "python -m models.check_weights on a directory")
def _(case):
    os.makedirs(case.path("weights"))
    return expect_error(run(["-m", "models.check_weights", case.path("weights")], timeout=60),
                        ["weights", "directory"])


# ---- data ------------------------------------------------------------------------------
def _data_copy(case: Case, edit: Callable[[dict], None]) -> str:
    data = case.path("data")
    shutil.copytree(case.fx["data"], data)
    path = os.path.join(data, "train", "train.json")
    with open(path) as f:
        annotations = json.load(f)
    edit(annotations)
    with open(path, "w") as f:
        json.dump(annotations, f)
    return data


def _check(data: str, *extra: str) -> Result:
    return run(["-m", "dataset.check", "--dataset", "youtube_vis", "--data-root", data, "--group", "1", *extra],
               timeout=150)


@fault("data_root_is_file", "train.py --data-root a file")
def _(case):
    res = run(["train.py", "--data-root", case.write("data.txt", "x"), "--output-dir", case.path("runs"),
               "--backbone-weights", "none", "--device", "cpu", *TINY], timeout=120)
    return expect_error(res, ["data.txt", "file|not a directory"])


@fault("annotations_list", "dataset.check on a train.json that holds a list")
def _(case):
    data = case.path("data")
    shutil.copytree(case.fx["data"], data)
    with open(os.path.join(data, "train", "train.json"), "w") as f:
        f.write("[]")
    return expect_error(_check(data), ["train.json"])


@fault("annotations_string_category_ids", "dataset.check with category ids written as strings (\"1\")")
def _(case):
    def edit(a):
        for annotation in a["annotations"]:
            annotation["category_id"] = str(annotation["category_id"])
    data = _data_copy(case, edit)
    return expect_either(_check(data), ["category"],
                         check=lambda: None if os.path.isdir(data) else "no data")


@fault("annotations_segmentations_short", "dataset.check: an annotation with fewer segmentations than its video's frames")
def _(case):
    def edit(a):
        a["annotations"][0]["segmentations"] = a["annotations"][0]["segmentations"][:3]
    return expect_error(_check(_data_copy(case, edit)), ["segmentations|frames"])


@fault("annotations_mask_size", "train.py check_data=true where the annotations say 32x32 and the frames are 64x64")
def _(case):
    def edit(a):
        for video in a["videos"]:
            video["height"] = video["width"] = 32
        for annotation in a["annotations"]:
            annotation["height"] = annotation["width"] = 32
    data = _data_copy(case, edit)
    res = run(["train.py", "--data-root", data, "--output-dir", case.path("runs"), "--backbone-weights", "none",
               "--device", "cpu", "check_data=true", *TINY], timeout=200)
    return expect_error(res, ["size|32"])


@fault("annotations_video_without_frames", "dataset.check: a video entry with an empty file_names list")
def _(case):
    def edit(a):
        a["videos"][0]["file_names"] = []
        a["videos"][0]["length"] = 0
    return expect_error(_check(_data_copy(case, edit)), ["video|file_names"])


@fault("dataset_check_frame_fifo", "python -m dataset.check where one frame file is a named pipe")
def _(case):
    data = case.path("data")
    shutil.copytree(case.fx["data"], data)
    frames = os.path.join(data, "train", "JPEGImages")
    video = sorted(os.listdir(frames))[0]
    frame = os.path.join(frames, video, sorted(os.listdir(os.path.join(frames, video)))[0])
    os.unlink(frame)
    os.mkfifo(frame)
    return expect_report(_check(data), [os.path.basename(frame), "pipe|fifo|not a regular file"])


@fault("train_frames_fifo", "train.py where every frame file is a named pipe (a broken copy)")
def _(case):
    data = case.path("data")
    shutil.copytree(case.fx["data"], data)
    for folder, _, files in os.walk(os.path.join(data, "train", "JPEGImages")):
        for name in files:
            os.unlink(os.path.join(folder, name))
            os.mkfifo(os.path.join(folder, name))
    res = run(["train.py", "--data-root", data, "--output-dir", case.path("runs"), "--backbone-weights", "none",
               "--device", "cpu", *TINY], timeout=200)
    return expect_error(res, ["pipe|fifo|not a regular file"])


@fault("synthetic_zero_frames", "python -m synthetic youtube_vis --frames 0")
def _(case):
    return expect_error(run(["-m", "synthetic", "youtube_vis", "--root", case.path("s"), "--frames", "0"]), ["frames"])


@fault("synthetic_tiny_height", "python -m synthetic youtube_vis --height 1")
def _(case):
    root = case.path("s")
    res = run(["-m", "synthetic", "youtube_vis", "--root", root, "--height", "1", "--videos-per-class", "1"])
    return expect_either(res, ["height"], check=lambda: None if os.path.isdir(root) else "nothing written")


@fault("synthetic_root_is_file", "python -m synthetic youtube_vis --root an existing file")
def _(case):
    path = case.write("root.txt", "mine")
    guard = snapshot(path)
    return expect_error(run(["-m", "synthetic", "youtube_vis", "--root", path]), ["root.txt"], guard=guard)


@fault("synthetic_negative_videos", "python -m synthetic youtube_vis --videos-per-class -3")
def _(case):
    return expect_error(run(["-m", "synthetic", "youtube_vis", "--root", case.path("s"), "--videos-per-class", "-3"]),
                        ["videos"])


@fault("dataset_check_group_5", "python -m dataset.check --group 5")
def _(case):
    return expect_error(_check(case.fx["data"]) if False else
                        run(["-m", "dataset.check", "--dataset", "youtube_vis", "--data-root", case.fx["data"],
                             "--group", "5"]), ["5"])


# ---- predict.py inputs -------------------------------------------------------------------
def _predict(case: Case, *extra: str, video=None, images=None, masks=None, output=None, timeout=200, env=None) -> Result:
    return run(["predict.py", *predict_args(case.fx, output or case.path("out"), video, *extra, images=images,
                                            masks=masks)], timeout=timeout, env=env)


def _predicted(case: Case, frames: int, output=None) -> Callable[[], Optional[str]]:
    def check():
        out = output or case.path("out")
        report = os.path.join(out, "predictions.json")
        if not os.path.isfile(report):
            return "no predictions.json"
        masks = [n for n in os.listdir(os.path.join(out, "masks")) if n.endswith(".png")]
        return None if len(masks) == frames else f"{len(masks)} masks for {frames} frames"
    return check


@fault("predict_palette_mask", "predict.py with a palette PNG support mask (DAVIS / YouTube-VOS annotations)")
def _(case):
    from PIL import Image
    import cv2
    import numpy as np

    mask = (cv2.imread(case.fx["sup_mask"], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    image = Image.fromarray(mask, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)
    path = case.path("palette.png")
    image.save(path)
    return expect_success(_predict(case, masks=[path]), _predicted(case, 6))


@fault("predict_palette_mask_two_objects", "predict.py with a palette PNG mask holding objects 1 and 2")
def _(case):
    from PIL import Image
    import cv2
    import numpy as np

    mask = (cv2.imread(case.fx["sup_mask"], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    mask[:, :IMAGE // 2] *= 2
    image = Image.fromarray(mask, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 253)
    path = case.path("palette2.png")
    image.save(path)
    return expect_either(_predict(case, masks=[path]), ["palette2.png", "1|object"], check=_predicted(case, 6))


@fault("predict_alpha_mask", "predict.py with an RGBA support mask whose object is in the alpha channel only")
def _(case):
    import cv2
    import numpy as np

    alpha = cv2.imread(case.fx["sup_mask"], cv2.IMREAD_GRAYSCALE)
    rgba = np.zeros((IMAGE, IMAGE, 4), np.uint8)
    rgba[..., 3] = alpha
    path = _write_png(case.path("alpha.png"), rgba)
    return expect_either(_predict(case, masks=[path]), ["alpha.png", "alpha"], check=_predicted(case, 6))


@fault("predict_16bit_mask", "predict.py with a 16-bit PNG support mask of 0/65535")
def _(case):
    import cv2
    import numpy as np

    mask = (cv2.imread(case.fx["sup_mask"], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint16) * 65535
    path = _write_png(case.path("m16.png"), mask)
    return expect_either(_predict(case, masks=[path]), ["m16.png", "65535"], check=_predicted(case, 6))


@fault("predict_gray_rgba_16bit_frames", "predict.py on a frame folder of grayscale, RGBA and 16-bit PNGs")
def _(case):
    import cv2
    import numpy as np

    frames = case.path("frames")
    for i in range(3):
        bgr = _disk_frame(i)[0]
        _write_png(os.path.join(frames, f"{3 * i:05d}.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        _write_png(os.path.join(frames, f"{3 * i + 1:05d}.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
        _write_png(os.path.join(frames, f"{3 * i + 2:05d}.png"), bgr.astype(np.uint16) * 257)
    return expect_success(_predict(case, video=frames), _predicted(case, 9))


@fault("predict_mask_other_size", "predict.py with a support mask of another size than its image")
def _(case):
    import cv2

    mask = cv2.resize(cv2.imread(case.fx["sup_mask"], cv2.IMREAD_GRAYSCALE), (48, 48), interpolation=cv2.INTER_NEAREST)
    return expect_error(_predict(case, masks=[_write_png(case.path("small.png"), mask)]), ["small.png", "48"])


@fault("predict_all_zero_mask", "predict.py with an all-zero support mask")
def _(case):
    import numpy as np

    path = _write_png(case.path("zero.png"), np.zeros((IMAGE, IMAGE), np.uint8))
    return expect_error(_predict(case, masks=[path]), ["zero.png", "empty"])


@fault("predict_one_pixel_frames", "predict.py on frames of 1x1 pixel with a 1x1 support")
def _(case):
    import numpy as np

    frames = case.path("frames")
    for i in range(3):
        _write_png(os.path.join(frames, f"{i:05d}.png"), np.full((1, 1, 3), 200, np.uint8))
    image = _write_png(case.path("s.png"), np.full((1, 1, 3), 200, np.uint8))
    mask = _write_png(case.path("m.png"), np.full((1, 1), 255, np.uint8))
    return expect_either(_predict(case, video=frames, images=[image], masks=[mask]), ["1x1"],
                         check=_predicted(case, 3))


@fault("predict_empty_folder", "predict.py --video a folder without frames (a .txt only)")
def _(case):
    folder = case.path("frames")
    case.write("frames/notes.txt", "x")
    return expect_error(_predict(case, video=folder), ["frames"])


@fault("predict_zero_frame_video", "predict.py --video an .mp4 with no frames")
def _(case):
    import av

    path = case.path("empty.mp4")
    with av.open(path, "w") as container:             # the header and index of a video of no frames
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = IMAGE
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    out = case.path("out")
    return expect_error(_predict(case, video=path), ["empty.mp4"],
                        also=lambda: "an output folder was left" if os.path.exists(out) else None)


@fault("predict_one_frame_video", "predict.py --video an .mp4 of 1 frame")
def _(case):
    from utils.video import VideoWriter

    path = case.path("one.mp4")
    sys.path.insert(0, REPO)
    with VideoWriter.open(path, fps=10, size=(IMAGE, IMAGE)) as writer:
        writer.write(_disk_frame(0)[0])
    return expect_success(_predict(case, video=path), _predicted(case, 1))


@fault("predict_size_changes_mid_folder", "predict.py: frame 3 of the folder has another size; earlier outputs kept")
def _(case):
    import numpy as np

    frames = case.path("frames")
    shutil.copytree(case.fx["frames"], frames)
    _write_png(os.path.join(frames, "00003.jpg"), np.full((48, 80, 3), 90, np.uint8))
    out = case.path("out")
    shutil.copytree(case.fx["pred_out"], out)
    guard = snapshot(out)
    return expect_error(_predict(case, "--overwrite", video=frames, output=out), ["00003.jpg", "80x48|48"], guard=guard)


@fault("predict_unequal_supports", "predict.py with 2 support images and 1 mask")
def _(case):
    return expect_error(_predict(case, images=[case.fx["sup_img"], case.fx["sup_img2"]]), ["s1.jpg|mask"])


@fault("predict_class_traversal", "predict.py --class ../x (a path in a class name)")
def _(case):
    res = run(["predict.py", "--checkpoint", case.fx["export"], "--video", case.fx["frames"], "--output",
               case.path("out"), "--device", "cpu", "--class", "../x", "--support-images", case.fx["sup_img"],
               "--support-masks", case.fx["sup_mask"]])
    return expect_error(res, ["../x"])


@fault("predict_output_inside_input", "predict.py --video frames/ --output frames/out, run twice")
def _(case):
    frames = case.path("frames")
    shutil.copytree(case.fx["frames"], frames)
    guard = snapshot(frames)
    out = os.path.join(frames, "out")
    first = _predict(case, video=frames, output=out)
    if first.rc != 0:
        return expect_success(first)
    guard = {k: v for k, v in guard.items()}
    second = _predict(case, "--overwrite", video=frames, output=out)
    return expect_success(second, _predicted(case, 6, output=out), guard=guard)


@fault("predict_output_is_input_folder", "predict.py --video frames/ --output frames/ --overwrite")
def _(case):
    frames = case.path("frames")
    shutil.copytree(case.fx["frames"], frames)
    guard = snapshot(frames)
    return expect_either(_predict(case, "--overwrite", video=frames, output=frames), ["frames"],
                         check=_predicted(case, 6, output=frames), guard=guard)


@fault("predict_video_among_outputs", "predict.py --video out/overlay.mp4 --output out --overwrite (the input is an output it replaces)")
def _(case):
    out = case.path("out")
    shutil.copytree(case.fx["pred_out"], out)
    video = os.path.join(out, "overlay.mp4")
    guard = snapshot(video)
    return expect_error(_predict(case, "--overwrite", video=video, output=out), ["overlay.mp4"], guard=guard)


@fault("predict_support_among_outputs", "predict.py --support-masks out/masks/00002.png --output out --overwrite")
def _(case):
    out = case.path("out")
    shutil.copytree(case.fx["pred_out"], out)
    import cv2

    mask = os.path.join(out, "masks", "00002.png")
    _write_png(mask, cv2.imread(case.fx["sup_mask"], cv2.IMREAD_GRAYSCALE))   # a corrected mask
    guard = snapshot(mask)
    return expect_error(_predict(case, "--overwrite", masks=[mask], output=out), ["00002.png"], guard=guard)


@fault("predict_same_output_and_video", "predict.py --video x.mp4 --output x.mp4")
def _(case):
    video = case.path("x.mp4")
    shutil.copy2(case.fx["video"], video)
    guard = snapshot(video)
    return expect_error(_predict(case, "--overwrite", video=video, output=video), ["x.mp4"], guard=guard)


@fault("predict_support_fifo", "predict.py --support-images a named pipe")
def _(case):
    return expect_error(_predict(case, images=[case.fifo("s.jpg")], timeout=90), ["s.jpg", "not a regular file|pipe|fifo"])


@fault("predict_frame_fifo", "predict.py on a frame folder where one frame is a named pipe")
def _(case):
    frames = case.path("frames")
    shutil.copytree(case.fx["frames"], frames)
    os.unlink(os.path.join(frames, "00002.jpg"))
    os.mkfifo(os.path.join(frames, "00002.jpg"))
    return expect_error(_predict(case, video=frames, timeout=120), ["00002.jpg"])


@fault("predict_video_fifo", "predict.py --video a named pipe")
def _(case):
    return expect_error(_predict(case, video=case.fifo("v.mp4"), timeout=90), ["v.mp4", "not a regular file|pipe|fifo"])


@fault("predict_unicode_space_paths", "predict.py with spaces, accents and '=' in every path")
def _(case):
    frames = case.path("vidéo clips=1", "frames é")
    shutil.copytree(case.fx["frames"], frames)
    image = case.path("sup port", "ïmage=1.jpg")
    os.makedirs(os.path.dirname(image))
    shutil.copy2(case.fx["sup_img"], image)
    mask = case.path("sup port", "mäsk=1.png")
    shutil.copy2(case.fx["sup_mask"], mask)
    out = case.path("sortie é", "x y=z")
    return expect_success(_predict(case, video=frames, images=[image], masks=[mask], output=out),
                          _predicted(case, 6, output=out))


@fault("predict_image_size_of_other_model", "predict.py image_size=72,72 with a model trained at 64x64")
def _(case):
    res = run(["predict.py", "image_size=72,72", *predict_args(case.fx, case.path("out"))])
    return expect_either(res, ["64", "image_size"], check=_predicted(case, 6))


@fault("predict_stale_foreign_lock", "predict.py --overwrite into a folder whose .lock names a dead process on another host")
def _(case):
    out = case.path("out")
    shutil.copytree(case.fx["pred_out"], out)
    case.write("out/.lock", json.dumps({"pid": 999999, "host": "gpu-node-17", "started": "2024-01-01 00:00:00",
                                        "command": "predict.py ..."}))
    return expect_success(_predict(case, "--overwrite", output=out), _predicted(case, 6, output=out))


# ---- signals and concurrency ------------------------------------------------------------
@fault("sigterm_during_test", "SIGTERM while test.py segments; an earlier results file at --output")
def _(case):
    out = case.path("t", "r.json")
    os.makedirs(os.path.dirname(out))
    shutil.copy2(case.fx["test_json"], out)
    guard = snapshot(out)
    res = run(["test.py", "--data-root", case.fx["data"], "--checkpoint", case.fx["export"], "--device", "cpu",
               "--output", out, "--runs", "3", *TINY], signal_on=printed("testing", 2.0), timeout=300)

    def leftovers():
        extra = [n for n in os.listdir(os.path.dirname(out)) if n not in ("r.json", "r.log", ".r.json.lock")]
        return f"left {extra}" if extra else None
    return expect_stopped(res, guard=guard, also=leftovers)


@fault("sigterm_during_predict", "SIGTERM while predict.py segments; earlier outputs in --output")
def _(case):
    out = case.path("out")
    shutil.copytree(case.fx["pred_out"], out)
    guard = snapshot(out)
    frames = case.path("frames")
    for i in range(30):
        _write_png(os.path.join(frames, f"{i:05d}.jpg"), _disk_frame(i % 7)[0])
    res = run(["predict.py", *predict_args(case.fx, out, frames, "--overwrite")],
              signal_on=printed("segmenting", 1.0), timeout=300)
    return expect_stopped(res, guard=guard)


@fault("sigint_during_model_build_predict", "Ctrl-C (SIGINT) while predict.py reads the checkpoint; earlier outputs kept")
def _(case):
    out = case.path("out")
    shutil.copytree(case.fx["pred_out"], out)
    guard = snapshot(out)
    res = run(["predict.py", *predict_args(case.fx, out, None, "--overwrite")], signal_on=opened(case.fx["export"]),
              signum=signal.SIGINT, timeout=200)
    return expect_stopped(res, guard=guard, statuses=(130,))


@fault("sigint_during_model_build_test", "Ctrl-C (SIGINT) while test.py reads the checkpoint")
def _(case):
    out = case.path("t", "r.json")
    res = run(["test.py", "--data-root", case.fx["data"], "--checkpoint", case.fx["best"], "--device", "cpu",
               "--output", out, *TINY], signal_on=opened(case.fx["best"]), signum=signal.SIGINT, timeout=200)
    return expect_stopped(res, statuses=(130,),
                          also=lambda: "a results file was written" if os.path.exists(out) else None)


def _reproduce_argv(case: Case, out: str, *extra: str) -> List[str]:
    return ["reproduce.py", "--folds", "1", "--data-root", case.fx["data2"], "--device", "cpu",
            "--backbone-weights", "none", "--output-dir", out, *extra, *TINY]


@fault("sigterm_during_reproduce_then_rerun", "SIGTERM while reproduce.py trains fold 1, then the same command again", slow=True)
def _(case):
    out = case.path("out")
    first = run(_reproduce_argv(case, out), signal_on=printed("epoch 1/1", 0.5), timeout=400)
    verdict = expect_stopped(first, statuses=(75,))
    if verdict.cls != "OK":
        return verdict
    second = run(_reproduce_argv(case, out), timeout=600)
    results = os.path.join(out, "reproduce_youtube_vis", "results.json")
    return expect_success(second, lambda: None if os.path.isfile(results) else "no results.json")


@fault("two_reproduce_at_once", "a second reproduce.py on the same --output-dir while the first trains", slow=True)
def _(case):
    out = case.path("out")
    argv = [PYTHON, *_reproduce_argv(case, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    started = time.time()
    while b"epoch 1/1" not in seen and first.poll() is None and time.time() - started < 300:
        seen += first.stderr.read1(4096)
    second = run(_reproduce_argv(case, out), timeout=300)
    rest = first.communicate(timeout=600)[1]
    if first.returncode != 0:
        return Verdict("LOSS", f"the first reproduce.py ended {first.returncode}: {_short(rest.decode()[-240:])}")
    if second.rc == 0:
        return expect_success(second)       # it waited or reused: fine if the table is there
    return expect_error(second, ["in use|lock|another"])


@fault("reproduce_same_fold_twice", "reproduce.py --folds 1 1", slow=True)
def _(case):
    out = case.path("out")
    res = run(["reproduce.py", "--folds", "1", "1", "--data-root", case.fx["data2"], "--device", "cpu",
               "--backbone-weights", "none", "--output-dir", out, *TINY], timeout=600)

    def one_fold():
        path = os.path.join(out, "reproduce_youtube_vis", "results.json")
        if not os.path.isfile(path):
            return "no results.json"
        with open(path) as f:
            folds = list(json.load(f)["folds"])
        return None if folds == ["1"] else f"folds {folds}"
    return expect_either(res, ["1"], check=one_fold)


@fault("predict_checkpoint_empty_string", "predict.py --checkpoint \"\"")
def _(case):
    res = run(["predict.py", *predict_args(case.fx, case.path("out"), None, checkpoint="")])
    return expect_error(res, ["--checkpoint"])


@fault("resume_read_only_run", "train.py --resume epochs=2 on a run directory mounted read-only")
def _(case):
    run_dir = case.linked_run()
    view = case.mount(case.path("ro"), "ro", source=case.path("runs"))
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", view, "--run-name", "r1", "--resume",
               "--backbone-weights", "none", "--device", "cpu", *TINY2], timeout=200)
    return expect_error(res, ["read-only"], guard=snapshot(run_dir))


@fault("reproduce_read_only_output_dir", "reproduce.py --output-dir on a read-only tmpfs")
def _(case):
    where = case.mount(case.path("ro"), "ro")
    return expect_error(run(_reproduce_argv(case, where), timeout=200), ["read-only", "ro"])


@fault("auto_resume_last_is_export", "train.py --auto-resume where last.pth is an exported (weights-only) file")
def _(case):
    run_dir = case.linked_run(files=("best.pth", "metrics.jsonl", "config.yaml"))
    os.link(case.fx["export"], os.path.join(run_dir, "last.pth"))
    guard = snapshot(run_dir)
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--run-name", "r1",
               "--auto-resume", "--backbone-weights", "none", "--device", "cpu", *TINY2], timeout=200)
    return expect_error(res, ["last.pth"], guard=guard)


@fault("resume_last_is_fifo", "train.py --resume where last.pth is a named pipe")
def _(case):
    run_dir = case.linked_run(files=("best.pth", "metrics.jsonl", "config.yaml"))
    os.mkfifo(os.path.join(run_dir, "last.pth"))
    guard = snapshot(run_dir)
    res = run(["train.py", "--data-root", case.fx["data"], "--output-dir", case.path("runs"), "--run-name", "r1",
               "--resume", "--backbone-weights", "none", "--device", "cpu", *TINY2], timeout=120)
    return expect_error(res, ["last.pth"], guard=guard)


# ---- the Python API -----------------------------------------------------------------------
@fault("api_keyboard_interrupt_mid_clip", "KeyboardInterrupt inside a Session's clip (a notebook's stop button), then the session is used on")
def _(case):
    res = api("""
        import cv2, torch
        p = Predictor.from_checkpoint(EXPORT, device="cpu", clip_length=3)
        frames = [cv2.cvtColor(cv2.imread(os.path.join(FRAMES, n)), cv2.COLOR_BGR2RGB) for n in sorted(os.listdir(FRAMES))]
        session = p.start([SUP_IMG], [SUP_MASK])
        real = p.segmenter.step_classes
        calls = []
        def interrupted(*a, **k):
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real(*a, **k)
        p.segmenter.step_classes = interrupted
        got = []
        for f in frames:
            try:
                got += session.add_frame(f)
            except KeyboardInterrupt:
                pass
            except VIPMTError as e:
                result(error=str(e)); sys.exit(0)
        try:
            got += session.flush()
        except VIPMTError as e:
            result(error=str(e)); sys.exit(0)
        result(indices=[r.index for r in got])
    """)
    verdict = _generic(res, None)
    if verdict:
        return verdict
    found = api_result(res) or {}
    if "error" in found:
        return Verdict("OK" if "interrupt" in found["error"].lower() else "VAGUE", _short(found["error"]))
    if found.get("indices") == list(range(6)):
        return Verdict("OK", "every frame segmented after the interrupt")
    return Verdict("SILENT", f"the session went on and returned frames {found.get('indices')} of 0..5")


@fault("api_segment_many_sets_mismatch", "segment_many with 2 videos and 3 sets of supports")
def _(case):
    return expect_api_error(api_refuses("""
        p = Predictor.from_checkpoint(EXPORT, device="cpu")
        list(p.segment_many([FRAMES, FRAMES], [[SUP_IMG]] * 3, [[SUP_MASK]] * 3))
    """), ["3", "2"])


@fault("api_from_checkpoint_json", "Predictor.from_checkpoint(a results JSON)")
def _(case):
    return expect_api_error(api_refuses("""
        Predictor.from_checkpoint(TEST_JSON, device="cpu")
    """), ["earlier_test.json", "json|not a pytorch|not a checkpoint"])


@fault("api_start_classes_empty", "predictor.start_classes({})")
def _(case):
    return expect_api_error(api_refuses("""
        p = Predictor.from_checkpoint(EXPORT, device="cpu")
        p.start_classes({})
    """), ["empty"])


@fault("api_float_video", "predictor.segment(float32 array [T,H,W,3] in 0..1)")
def _(case):
    return expect_api_error(api_refuses("""
        p = Predictor.from_checkpoint(EXPORT, device="cpu")
        list(p.segment(np.random.rand(4, 64, 64, 3).astype(np.float32), [SUP_IMG], [SUP_MASK]))
    """), ["uint8"])


@fault("api_generator_size_change", "predictor.segment(a generator whose 3rd frame has another size)")
def _(case):
    return expect_api_error(api_refuses("""
        p = Predictor.from_checkpoint(EXPORT, device="cpu", clip_length=2)
        def frames():
            for i in range(5):
                yield np.zeros((64, 64, 3) if i != 2 else (48, 64, 3), np.uint8)
        list(p.segment(frames(), [SUP_IMG], [SUP_MASK]))
    """), ["frame 2|video frame 2", "64x48"])


@fault("api_clip_length_zero", "Predictor.from_checkpoint(..., clip_length=0)")
def _(case):
    return expect_api_error(api_refuses("""
        Predictor.from_checkpoint(EXPORT, device="cpu", clip_length=0)
    """), ["clip_length"])


@fault("api_image_size_odd", "Predictor.from_checkpoint(..., image_size=(64, 65))")
def _(case):
    return expect_api_error(api_refuses("""
        Predictor.from_checkpoint(EXPORT, device="cpu", image_size=(64, 65))
    """), ["65"])


# ============================================================================ the runner
def run_battery(work: str, names: Sequence[str], skip_slow: bool) -> List[dict]:
    rows = []
    for number, item in enumerate(FAULTS):
        if names and item.name not in names:
            continue
        if skip_slow and item.slow and not names:
            continue
        case = Case(work, number)
        started = time.time()
        try:
            verdict = item.function(case)
        except Skip as why:
            verdict = Verdict("SKIPPED", str(why))
        finally:
            case.close()
        rows.append({"fault": item.name, "what": item.what, "class": verdict.cls, "detail": verdict.detail,
                     "seconds": round(time.time() - started, 1)})
        print(f"{verdict.cls:<14} {item.name:<40} {time.time() - started:6.1f} s  {verdict.detail}", flush=True)
        if verdict.cls == "OK":
            shutil.rmtree(case.dir, ignore_errors=True)
    return rows


def print_table(rows: List[dict]) -> None:
    print("\n| fault | what | outcome | detail |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['fault']} | {row['what']} | {row['class']} | {row['detail'].replace('|', '/')} |")
    counts = {cls: sum(row["class"] == cls for row in rows) for cls in CLASSES}
    print("\n" + ", ".join(f"{cls} {n}" for cls, n in counts.items() if n or cls != "SKIPPED")
          + f" ({len(rows)} faults)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/vipmt-fault-battery", help="fixtures and case folders")
    parser.add_argument("--only", nargs="+", default=[], metavar="FAULT", help="run these faults only")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--fresh", action="store_true", help="rebuild the fixtures")
    parser.add_argument("--skip-slow", action="store_true", help="leave out the faults that train twice")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.list:
        for item in FAULTS:
            print(f"{item.name:<42} {item.what}")
        print(f"{len(FAULTS)} faults")
        return 0
    unknown = sorted(set(args.only) - {item.name for item in FAULTS})
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")
    sys.path.insert(0, REPO)
    os.makedirs(args.work, exist_ok=True)
    build_fixtures(args.work, args.fresh)
    rows = run_battery(args.work, args.only, args.skip_slow)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(row["class"] in ("OK", "SKIPPED") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
