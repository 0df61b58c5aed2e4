"""GPU readiness in one command: golden cases, engine speed, AMP training, kill + resume, DDP.

    bash scripts/gpu_check.sh                                  # CUDA, full sizes, about 5-10 minutes
    python -m benchmarks.gpu_check --device cpu --quick --out /tmp/gpu_check   # tiny sizes, end to end on CPU

Sections (each reports pass / fail / skipped with its numbers; a failing section never stops the
others):

1. golden: tests/test_model_golden.py on the device in float32 (TF32 off), per-case outcome and
   the measured differences (`--quick`: one eval case);
2. engine: `VideoSegmenter` frames/s in float32 and bfloat16 autocast on a synthetic 30-frame
   video (5 supports, memory on every clip), and how far the bf16 predictions are from float32's;
   videos per pass: 32 such videos with K = 1, 4, 16 videos per forward pass (`test_video_batch`,
   `benchmarks/video_batch_speed.py`) in float32 and bf16: frames/s, and the pixels that differ
   from K = 1 (float32) and from float32 (bf16);
3. amp training: 20 training steps (three 5-frame clips, batch 4, 240x424, random backbone) with
   float16 autocast and a gradient scaler as train.py runs them: step time, peak memory, finite
   losses, steps the scaler skipped;
4. kill + resume: train.py on a tiny synthetic dataset, SIGKILL after its first checkpoint,
   `--resume --stop-after` two steps further; the run must continue from the checkpoint;
5. ddp: train.py under torchrun on every GPU (NCCL), two steps; skipped with one GPU;
6. train epoch at YouTube-VIS resolution: one epoch of train.py (random backbone, AMP, the default
   ``num_workers=auto``) on benchmarks/loader_speed.py's synthetic 1280x720 tree (a quarter of
   the videos portrait), with the default augmentation and with ``fast_augment=true``: steps/s and the
   share of the epoch the model waited for data (metrics.jsonl's ``data_time``, issue 17);
   ``--quick``: the default augmentation on the tiny dataset only.

Writes report.md and report.json to --out (default outputs/gpu_check/) and prints the markdown.
Exit status 0 when no section failed, 1 otherwise, 2 for a bad command line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.engine_speed import make_paths, synchronize, synthetic_video  # noqa: E402
from benchmarks.loader_speed import write_datasets as write_loader_datasets  # noqa: E402
from benchmarks.train_step_speed import synthetic_batch, train_step_trainer  # noqa: E402
from benchmarks.video_batch_speed import make_videos, measure  # noqa: E402
from synthetic import write_synthetic_youtube_vis  # noqa: E402
from models import VIPMT  # noqa: E402
from utils.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from utils.runtime import EXIT_FAILURE, UserError, resolve_device, run_cli  # noqa: E402

DEFAULT_OUT = "outputs/gpu_check"
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
# A sanity bound, not a contract: bf16 autocast moved 0.003 % of the pixels on CPU (docs/speed.md).
BF16_MAX_PIXELS_DIFFERING = 0.01
# Sanity bound for K videos per pass against one at a time in float32: the arithmetic is the same
# per video, only kernel choices for the larger batch round differently (CPU: no pixel moved).
BATCH_MAX_PIXELS_DIFFERING = 1e-4
BF16_TARGET_FRAMES_PER_S = 1000      # issue 18's target on one H200 at 240x424
# GradScaler starts at 2**16 and halves on every overflow; a handful of early skips is normal.
MAX_SKIPPED_STEPS = 10
SUBPROCESS_TIMEOUT = 420     # seconds, each pytest / train.py / torchrun call


@dataclass(frozen=True)
class Sizes:
    golden_cases: str | None      # pytest -k expression, None = every case
    engine_frames: int
    engine_size: tuple
    amp_steps: int
    amp_batch: int
    amp_size: tuple
    train_size: tuple             # kill + resume and DDP runs of train.py, on a synthetic dataset
    dataset_frames: int
    dataset_classes: int          # fold 1 trains on the classes not == 1 (mod 4)
    train_overrides: tuple
    batch_videos: int = 32        # videos-per-pass section: videos x frames at engine_size, K values
    batch_frames: int = 30
    batch_sizes: tuple = (1, 4, 16)


FULL = Sizes(golden_cases=None, engine_frames=30, engine_size=(240, 424), amp_steps=20, amp_batch=4,
             amp_size=(240, 424), train_size=(120, 216), dataset_frames=15, dataset_classes=40,
             train_overrides=("episodes_per_class=2", "val_episodes_per_class=1", "batch_size=2",
                              "val_batch_size=2", "num_workers=2"))
QUICK = Sizes(golden_cases="eval_b1_q5_s5", engine_frames=4, engine_size=(64, 112), amp_steps=2, amp_batch=2,
              amp_size=(64, 64), train_size=(64, 64), dataset_frames=8, dataset_classes=4,
              train_overrides=("query_frames=3", "clip_length=1", "memory_size=1", "episodes_per_class=1",
                               "val_episodes_per_class=1", "batch_size=1", "val_batch_size=1", "num_workers=0"),
              batch_videos=2, batch_frames=3, batch_sizes=(1, 2))


@dataclass
class Section:
    name: str
    status: str = SKIPPED
    seconds: float = 0.0
    summary: str = ""                                   # one line of numbers for the table
    details: dict = field(default_factory=dict)
    note: str = ""


# ================================================================ helpers
def _python_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list, cwd: Path = REPO, env: dict | None = None, timeout: int = SUBPROCESS_TIMEOUT):
    return subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env or _python_env(), capture_output=True,
                          text=True, timeout=timeout)


def _load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _gib(n_bytes: int) -> float:
    return round(n_bytes / 2 ** 30, 2)


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpu_threads": torch.get_num_threads(), "host": platform.node()}
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    tf32_convolutions=torch.backends.cudnn.allow_tf32,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        info["gpus"] = []
    return info


# ================================================================ sections
def check_golden(device: torch.device, sizes: Sizes, out: Path) -> Section:
    """tests/test_model_golden.py on the device; per-case outcome and measured differences."""
    section = Section("golden cases (float32)")
    report = out / "golden_junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
           f"--junitxml={report}", "tests/test_model_golden.py"]
    if sizes.golden_cases:
        cmd += ["-k", sizes.golden_cases]
    proc = _run(cmd, env=_python_env(VIPMT_TEST_DEVICE=str(device)))
    if not report.exists():
        section.status, section.note = FAIL, "pytest wrote no report:\n" + _tail(proc.stdout + proc.stderr)
        return section
    cases = {}
    for case in ElementTree.parse(report).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or "").splitlines()
                cases.setdefault(case.get("name"), {})["message"] = message[0] if message else ""
        measured = {p.get("name"): float(p.get("value")) for p in case.iter("property")}
        cases.setdefault(case.get("name"), {}).update(outcome=outcome, **measured)
    outcomes = [c["outcome"] for c in cases.values()]
    section.details = {"cases": cases}
    if not cases:
        section.status, section.note = FAIL, "no test ran:\n" + _tail(proc.stdout + proc.stderr)
    elif all(o == "skipped" for o in outcomes):
        section.status, section.note = SKIPPED, next(iter(cases.values())).get("message", "")
    else:
        section.status = PASS if all(o in ("passed", "skipped") for o in outcomes) else FAIL
    worst = {}
    for c in cases.values():
        for name, value in c.items():
            if isinstance(value, float) and name != "minority_iou":
                worst[name] = max(worst.get(name, 0.0), value)
    section.details["worst"] = worst
    section.summary = (f"{outcomes.count('passed')}/{len(outcomes)} cases passed; worst logits diff "
                       f"{max(worst.get('init_logits_max_abs_diff', 0), worst.get('logits_max_abs_diff', 0)):.1e}")
    return section


def check_engine(device: torch.device, sizes: Sizes, out: Path) -> Section:
    """VideoSegmenter frames/s in float32 and bf16 autocast, and their prediction agreement."""
    section = Section("engine speed (fp32, bf16)")
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=sizes.engine_size).to(device).eval()
    frames, support_img, support_mask = (t.to(device) for t in synthetic_video(sizes.engine_frames, 5,
                                                                                 size=sizes.engine_size))
    names = ("engine fp32", "engine bf16 autocast")
    warm_up = make_paths(model, frames[:2], support_img, support_mask, bf16=True)
    for name in names:
        warm_up[name]()
    paths = make_paths(model, frames, support_img, support_mask, bf16=True)
    results = {}
    for name in names:
        synchronize(device)
        started = time.perf_counter()
        prediction = paths[name]()
        synchronize(device)
        seconds = time.perf_counter() - started
        results[name] = (prediction, seconds)
    fp32, bf16 = (results[n][0] for n in names)
    differing = (bf16.pred != fp32.pred).float().mean().item()
    section.details = {
        "frames": sizes.engine_frames, "image_size": list(sizes.engine_size),
        "fp32_frames_per_s": round(sizes.engine_frames / results[names[0]][1], 2),
        "bf16_frames_per_s": round(sizes.engine_frames / results[names[1]][1], 2),
        "bf16_pixels_differing": differing,
        "bf16_max_score_diff": (bf16.score - fp32.score).abs().max().item(),
        "tf32_convolutions": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None}
    section.status = PASS if differing <= BF16_MAX_PIXELS_DIFFERING else FAIL
    d = section.details
    section.summary = (f"fp32 {d['fp32_frames_per_s']} frames/s, bf16 {d['bf16_frames_per_s']} frames/s, "
                       f"{differing:.4%} pixels differ")
    return section


def check_video_batch(device: torch.device, sizes: Sizes, out: Path) -> Section:
    """test.py's engine with K videos per forward pass (test_video_batch): frames/s for each K in
    float32 and bf16, and how far K > 1 is from K = 1 (float32) and bf16 from float32."""
    section = Section("videos per pass (K)")
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=sizes.engine_size).to(device).eval()
    videos = make_videos(sizes.batch_videos, sizes.batch_frames, sizes.engine_size, device)
    rows = measure(model, videos, sizes.batch_sizes, ("fp32", "bf16"), device)
    worst = max(row["vs_K1"]["pixels_differing"] for row in rows.values() if row["precision"] == "fp32" and "vs_K1" in row)
    best_bf16 = max(row["frames_per_s"] for row in rows.values() if row["precision"] == "bf16")
    section.details = {"videos": sizes.batch_videos, "frames_per_video": sizes.batch_frames,
                       "image_size": list(sizes.engine_size), "rows": rows,
                       "fp32_worst_pixels_differing_vs_K1": worst, "bf16_best_frames_per_s": best_bf16,
                       "bf16_target_frames_per_s": BF16_TARGET_FRAMES_PER_S,
                       "tf32_convolutions": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None}
    section.status = PASS if worst <= BATCH_MAX_PIXELS_DIFFERING else FAIL
    section.summary = ", ".join(f"{name} {row['frames_per_s']}" for name, row in rows.items()) + \
        f" frames/s; fp32 K>1 vs K=1: {worst:.4%} pixels differ"
    return section


def check_amp_training(device: torch.device, sizes: Sizes, out: Path) -> Section:
    """Training steps with float16 autocast and a gradient scaler (float32 off CUDA)."""
    section = Section("fp16 AMP training steps")
    amp = device.type == "cuda"
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=sizes.amp_size).to(device)
    trainer = train_step_trainer(model, device, amp=amp)          # train.py's step, without data
    trainer.state.memory_generator.manual_seed(0)
    batch = {k: t.to(device) for k, t in synthetic_batch(sizes.amp_batch, sizes.amp_size).items()}
    if amp:
        torch.cuda.reset_peak_memory_stats(device)

    seconds, losses, skipped = [], [], 0
    for _ in range(sizes.amp_steps):
        synchronize(device)
        started = time.perf_counter()
        result = trainer.train_step(batch)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        losses.append(result["loss"])
        skipped += int(result.skipped)
    scaler = trainer.scaler
    timed = seconds[2:] or seconds                           # the first steps pay for warm-up
    finite = all(math.isfinite(v) for v in losses)
    section.details = {
        "amp": "float16 autocast + GradScaler" if amp else "off (needs CUDA): float32",
        "steps": sizes.amp_steps, "batch": sizes.amp_batch, "image_size": list(sizes.amp_size),
        "step_seconds_median": round(statistics.median(timed), 3), "step_seconds_first": round(seconds[0], 3),
        "peak_memory_gib": _gib(torch.cuda.max_memory_allocated(device)) if amp else None,
        "losses": [round(v, 4) for v in losses], "losses_finite": finite, "skipped_steps": skipped,
        "final_scale": scaler.get_scale() if amp else None}
    section.status = PASS if finite and skipped <= MAX_SKIPPED_STEPS else FAIL
    d = section.details
    section.summary = (f"{d['step_seconds_median']} s/step, peak {d['peak_memory_gib']} GiB, losses finite: "
                       f"{finite}, skipped {skipped}/{sizes.amp_steps}")
    return section


def _train_command(device: torch.device, sizes: Sizes, data: Path, runs: Path, run_name: str) -> list:
    h, w = sizes.train_size
    return ["train.py", "--data-root", data, "--device", device.type, "--backbone-weights", "none",
            "--output-dir", runs, "--run-name", run_name, f"image_size={h},{w}", "epochs=2",
            "checkpoint_every_iters=1", *sizes.train_overrides]


def _synthetic_dataset(sizes: Sizes, root: Path) -> Path:
    """A YouTube-VIS 2019 tree (reused when it was written with the same parameters)."""
    write_synthetic_youtube_vis(str(root), videos_per_class=3, frames_per_video=sizes.dataset_frames,
                                frame_size=sizes.train_size, num_categories=sizes.dataset_classes, overwrite=True)
    return root


def _concluded(section: Section, ok: bool, proc: subprocess.CompletedProcess, summary: str) -> Section:
    """``section`` passed or failed, with ``proc``'s stderr tail when it failed, and its summary."""
    section.status = PASS if ok else FAIL
    if proc.returncode != 0:
        section.note = _tail(proc.stderr)
    section.summary = summary
    return section


def check_kill_resume(device: torch.device, sizes: Sizes, out: Path) -> Section:
    """SIGKILL train.py after its first checkpoint; --resume must continue from it."""
    section = Section("kill + resume (train.py)")
    work = out / "kill_resume"
    data = _synthetic_dataset(sizes, work / "data")
    runs = work / f"runs_{int(time.time())}"
    cmd = [sys.executable] + _train_command(device, sizes, data, runs, "run")
    checkpoint = runs / "run" / "last.pth"
    runs.mkdir(parents=True)
    with open(runs / "killed_run.stderr", "w+") as stderr:       # a file, not a pipe nobody drains
        proc = subprocess.Popen([str(c) for c in cmd], cwd=str(REPO), env=_python_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + SUBPROCESS_TIMEOUT
        try:
            while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        stderr.seek(0)
        if not checkpoint.exists():
            section.status, section.note = FAIL, "train.py wrote no checkpoint:\n" + _tail(stderr.read())
            return section
    killed_at = int(_load_checkpoint(checkpoint)["global_step"])
    target = killed_at + 2
    resumed = _run(cmd + ["--resume", "--stop-after", target])
    log = (runs / "run" / "train.log").read_text()
    final = int(_load_checkpoint(checkpoint)["global_step"]) if checkpoint.exists() else None
    section.details = {"killed_with": "SIGKILL", "killed_process_exit": proc.returncode,
                       "checkpoint_step_at_kill": killed_at, "resume_exit": resumed.returncode,
                       "checkpoint_step_after_resume": final, "expected_step": target,
                       "log_says_resumed": "resumed after epoch" in log}
    ok = resumed.returncode == 0 and final == target and "resumed after epoch" in log
    return _concluded(section, ok, resumed, f"killed at step {killed_at}, resumed to step {final} (expected {target})")


def check_ddp(device: torch.device, sizes: Sizes, out: Path, quick: bool) -> Section:
    """train.py under torchrun on every GPU (NCCL), or 2 CPU processes (gloo) without --quick."""
    section = Section("DDP (torchrun)")
    if device.type == "cuda":
        processes, backend = torch.cuda.device_count(), "nccl"
        if processes < 2:
            section.note = f"{processes} GPU visible: DDP over NCCL needs at least 2"
            return section
    elif quick:
        section.note = "--quick on CPU: skipped (tests/test_scripts_ddp.py runs gloo DDP)"
        return section
    else:
        processes, backend = 2, "gloo"
    data = _synthetic_dataset(sizes, out / "kill_resume" / "data")
    runs = out / "ddp" / f"runs_{int(time.time())}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", processes,
           *_train_command(device, sizes, data, runs, "ddp"), "--stop-after", 2]
    proc = _run(cmd, env=_python_env(OMP_NUM_THREADS="1"))
    checkpoint = runs / "ddp" / "last.pth"
    state = _load_checkpoint(checkpoint) if checkpoint.exists() else {}
    section.details = {"processes": processes, "backend": backend, "exit": proc.returncode,
                       "checkpoint_world_size": state.get("world_size"), "checkpoint_step": state.get("global_step")}
    ok = proc.returncode == 0 and state.get("world_size") == processes and state.get("global_step") == 2
    return _concluded(section, ok, proc,
                      f"{processes} processes ({backend}), exit {proc.returncode}, step {state.get('global_step')}")


def check_train_epoch(device: torch.device, sizes: Sizes, out: Path, quick: bool) -> Section:
    """One epoch of train.py at 1280x720 (default workers): steps/s and the data-wait fraction."""
    section = Section("train epoch at 1280x720 (loader)")
    if quick:
        data, size, steps_overrides = _synthetic_dataset(sizes, out / "kill_resume" / "data"), sizes.train_size, \
            list(sizes.train_overrides)
    else:
        data, size = Path(write_loader_datasets(str(out / "loader_data"))["1280x720"]), (240, 424)
        # 8 categories: fold 1 trains on 6 -> 6 x 8 episodes = 12 steps of batch 4
        steps_overrides = ["episodes_per_class=8", "val_episodes_per_class=1", "val_batch_size=2"]
    results = {}
    variants = (("default", []),) if quick else (("default", []), ("fast_augment", ["fast_augment=true"]))
    for name, extra in variants:
        runs = out / "train_epoch" / f"runs_{int(time.time())}_{name}"
        cmd = [sys.executable, "train.py", "--data-root", data, "--device", device.type, "--backbone-weights",
               "none", "--output-dir", runs, "--run-name", name, f"image_size={size[0]},{size[1]}", "epochs=1",
               *steps_overrides, *extra]
        started = time.perf_counter()
        proc = _run(cmd)
        lines = (runs / name / "metrics.jsonl").read_text().splitlines() if proc.returncode == 0 else []
        record = json.loads(lines[-1]) if lines else {}
        if not record:
            section.status, section.note = FAIL, f"{name}: train.py exit {proc.returncode}\n" + _tail(proc.stderr)
            return section
        step_seconds = record["data_time"] / max(record["data_wait_fraction"], 1e-9)
        results[name] = {"steps": record["global_step"], "steps_per_s": round(1 / step_seconds, 3),
                         "data_time_s": round(record["data_time"], 4),
                         "data_wait_fraction": round(record["data_wait_fraction"], 3),
                         "wall_seconds_with_startup_and_validation": round(time.perf_counter() - started, 1)}
    from vipmt.build import resolve_num_workers  # noqa: WPS433

    section.details = {"num_workers": f"auto = {resolve_num_workers('auto')}", "image_size": list(size), **results}
    section.status = PASS
    section.summary = "; ".join(f"{n}: {r['steps_per_s']} steps/s, {100 * r['data_wait_fraction']:.0f} % waiting"
                                for n, r in results.items())
    return section


# ================================================================ report
def run_section(name: str, function, *args) -> Section:
    started = time.perf_counter()
    try:
        section = function(*args)
    except Exception as exc:  # a failing section is reported, the others still run
        section = Section(name, FAIL, note=f"{type(exc).__name__}: {exc}\n{_tail(traceback.format_exc(), 8)}")
    section.seconds = round(time.perf_counter() - started, 1)
    print(f"[{section.status}] {section.name} ({section.seconds} s) {section.summary}", file=sys.stderr, flush=True)
    return section


def markdown(env: dict, sections: list, quick: bool) -> str:
    lines = ["# GPU readiness check", "",
             f"{'QUICK (tiny sizes) ' if quick else ''}run on {env['device']}: "
             + ", ".join(f"{k} {v}" for k, v in env.items() if k != "device"), "",
             "| section | status | seconds | numbers |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds} | {s.summary or (s.note.splitlines() or [''])[0]} |"
              for s in sections]
    for s in sections:
        lines += ["", f"## {s.name}: {s.status}", ""]
        if s.note:
            lines += ["```", s.note, "```", ""]
        lines += ["```json", json.dumps(s.details, indent=2), "```"]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU run in about a minute)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {args.out!r}: cannot create the report folder ({exc.strerror})") from None
    sizes = QUICK if args.quick else FULL
    env = environment(device)
    sections = [run_section("golden cases (float32)", check_golden, device, sizes, out),
                run_section("engine speed (fp32, bf16)", check_engine, device, sizes, out),
                run_section("videos per pass (K)", check_video_batch, device, sizes, out),
                run_section("fp16 AMP training steps", check_amp_training, device, sizes, out),
                run_section("kill + resume (train.py)", check_kill_resume, device, sizes, out),
                run_section("DDP (torchrun)", check_ddp, device, sizes, out, args.quick),
                run_section("train epoch at 1280x720 (loader)", check_train_epoch, device, sizes, out, args.quick)]
    text = markdown(env, sections, args.quick)
    atomic_write_text(str(out / "report.md"), text)
    atomic_write_json(str(out / "report.json"), {"environment": env, "quick": args.quick,
                                                 "sections": [asdict(s) for s in sections]})
    print(text)
    return EXIT_FAILURE if any(s.status == FAIL for s in sections) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, (UserError,)))
