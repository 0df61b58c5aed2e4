"""Segment object classes in your own video, given 1-5 annotated support images per class.

    python predict.py --checkpoint runs/youtube_vis_group1/best.pth --video my_video.mp4 --support-images cat1.jpg cat2.jpg --support-masks cat1.png cat2.png --output outputs/my_video
    python predict.py --checkpoint best.pth --video street.mp4 --output outputs/street --class car --support-images car.jpg --support-masks car.png --class person --support-images person.jpg --support-masks person.png
    python predict.py clip_length=1 --memory-pool-size 64 --checkpoint best.pth --video cam.mp4 --support-images a.jpg --support-masks a.png --output outputs/cam

The video is a video file (anything OpenCV reads) or a folder of frames (sorted by name), of
any length: it is read, segmented and written clip by clip (`vipmt.Predictor`). Support masks
are PNGs of the support images' size, 0/255 or 0/1 (object = nonzero). Frames are letterboxed
to the model's input size, segmented with reliable memory, and the masks are mapped back to the
original resolution. Several classes (`--class NAME` before each class's supports) share one
backbone pass per frame (`Predictor.segment_classes`); each class's masks are those of a run
for it alone.

Writes into --output: masks/<frame>.png (0/255, original size; masks/<NAME>/<frame>.png per
class), overlay.mp4 (the object in red; one colour per class) and predictions.json (per-frame
predicted IoU score and object fraction, per class). All three are written to a hidden staging
folder and swapped in only once all are written and verified: a full disk, a bad frame or
Ctrl-C leaves an earlier run's outputs exactly as they were (vipmt/outputs.py). The folder is
locked while a run writes it. A video file that ends before the frame count it declares is an
error unless --allow-truncated.

The settings are config keys (config/config.py), as in train.py and test.py: `key=value`,
`--config FILE` or `--key value`. The checkpoint's own settings (image_size, clip_length,
memory_size, memory_threshold) are the defaults; a value given replaces it, with a log line.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

from tqdm import tqdm

from config.config import DEFAULTS, ConfigError, check_image_size, parse_assignment
from utils.runtime import UserError, resolve_device, reuse_freed_memory
from vipmt.cli import add_config_arguments, add_config_option, explicit_values, run, script_parser
from vipmt.outputs import PredictionOutputs
from vipmt.predictor import InputError, Predictor, check_settings, open_video, prepare_supports

logger = logging.getLogger("predict")

# The config keys predict.py reads; the checkpoint's config is the default of the first four.
CHECKPOINT_KEYS = ("image_size", "clip_length", "memory_size", "memory_threshold")
PREDICT_KEYS = CHECKPOINT_KEYS + ("predictor_memory_pool_size", "test_bf16", "seed", "device")


FLAGS = {
    "--trust-checkpoint": "allow checkpoints with arbitrary pickled objects (files you trust only)",
    "--overwrite": "replace the outputs of an earlier run in --output (refused without it)",
    "--allow-truncated": "a video file that ends before its declared frame count (cut short, or a frame that does "
                         "not decode): keep the frames read (logged, and in predictions.json) instead of the error",
}


def build_parser():
    parser = script_parser(__doc__)
    parser.epilog = (f"{parser.epilog}\n\nconfig values: predict.py reads only the keys listed above. The checkpoint's "
                     f"config gives the defaults of {', '.join(CHECKPOINT_KEYS)}; the defaults shown apply to "
                     f"files without one (the authors'). A --config FILE may hold other keys (not used, logged).")
    add_config_arguments(parser, exclude=[key for key in DEFAULTS if key not in PREDICT_KEYS],
                         aliases=False, data_root=False)
    add_config_option(parser, "--memory-pool-size", "predictor_memory_pool_size",
                      help="draw memory from the N most recent reliable frames only, bounding memory on long "
                           f"videos (= --predictor-memory-pool-size; default {DEFAULTS.predictor_memory_pool_size}; "
                           f"0: from all of them, as the authors)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (= test_bf16=true; CUDA, or CPUs with AVX512-BF16: ~1.9x faster "
                             "there; the masks differ slightly from float32's)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="trained weights: our checkpoint or the authors' {'state_dict': ...} file; its config "
                             f"gives the defaults of {', '.join(CHECKPOINT_KEYS)}")
    parser.add_argument("--video", required=True, metavar="PATH", help="video file or folder of frames")
    parser.add_argument("--class", dest="classes", action="append", metavar="NAME",
                        help="name of the class whose --support-images and --support-masks follow; repeat for "
                             "several classes (masks/NAME/<frame>.png). Without it: one class, masks/<frame>.png")
    parser.add_argument("--support-images", nargs="+", action="append", required=True, metavar="IMG")
    parser.add_argument("--support-masks", nargs="+", action="append", required=True, metavar="PNG",
                        help="one mask per support image, same order")
    parser.add_argument("--output", required=True, metavar="DIR")
    for flag, text in FLAGS.items():
        parser.add_argument(flag, action="store_true", help=text)
    return parser


def settings_from(args) -> dict:
    """The config values given ({key: value} of PREDICT_KEYS), checked before any work."""
    values = explicit_values(args)
    if args.bf16:
        if values.get("test_bf16") is False:
            raise ConfigError("conflicting values for config key 'test_bf16': --bf16 and test_bf16=false")
        values["test_bf16"] = True
    foreign = sorted({parse_assignment(item)[0] for item in args.overrides or []} - set(PREDICT_KEYS))
    if foreign:
        hint = (" (predict.py's memory pool is predictor_memory_pool_size, also --memory-pool-size)"
                if "memory_pool_size" in foreign else "")
        raise ConfigError(f"{', '.join(foreign)}: not a setting of predict.py{hint}; it reads "
                          f"{', '.join(PREDICT_KEYS)}")
    unused = sorted(set(values) - set(PREDICT_KEYS))
    if unused:
        logger.info("--config %s: predict.py reads %s; not used: %s", args.config, ", ".join(PREDICT_KEYS),
                    ", ".join(unused))
    settings = {key: values[key] for key in PREDICT_KEYS if key in values}
    if "image_size" in settings:
        check_image_size(settings["image_size"])
    try:
        check_settings(memory_threshold=settings.get("memory_threshold"), memory_size=settings.get("memory_size"),
                       memory_pool_size=settings.get("predictor_memory_pool_size"),
                       clip_length=settings.get("clip_length"), seed=settings.get("seed"))
    except InputError as error:
        raise ConfigError(str(error)) from None
    return settings


def class_supports(args) -> dict | None:
    """{class name: (support image paths, support mask paths)} of --class, or None for one unnamed class."""
    images, masks, names = args.support_images, args.support_masks, args.classes
    for path in (p for group in images + masks for p in group):
        if "=" in path and path.split("=", 1)[0] in DEFAULTS and not os.path.exists(path):
            raise ConfigError(f"{path}: a key=value override was read as a support file; put the overrides "
                              f"before the options (e.g. python predict.py {path} --checkpoint ...)")
    if names is None:
        if len(images) > 1 or len(masks) > 1:
            raise UserError(f"{len(images)} --support-images and {len(masks)} --support-masks lists: for several "
                            f"classes put --class NAME before each class's --support-images and --support-masks")
        return None
    if not len(names) == len(images) == len(masks):
        raise UserError(f"{len(names)} --class names, {len(images)} --support-images and {len(masks)} "
                        f"--support-masks lists: give each --class NAME its own --support-images and --support-masks")
    for name in names:
        if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name or "\0" in name:
            raise UserError(f"--class {name!r}: a class name is a folder name in masks/ (no '/', not empty, not "
                            f"starting with '.')")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"--class {', '.join(map(repr, repeated))} given more than once; give each class once, "
                        f"with all its supports")
    return {name: (group_images, group_masks) for name, group_images, group_masks in zip(names, images, masks)}


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    classes = class_supports(args)
    inputs = {"--video": [args.video], "--support-images": [p for group in args.support_images for p in group],
              "--support-masks": [p for group in args.support_masks for p in group], "--checkpoint": [args.checkpoint]}
    with PredictionOutputs(args.output, overwrite=args.overwrite, inputs=inputs) as outputs:   # checked, locked first
        if classes is None:
            supports = prepare_supports(args.support_images[0], args.support_masks[0])
        else:
            supports = {name: _prepared(name, *paths) for name, paths in classes.items()}
        video = open_video(args.video, allow_truncated=args.allow_truncated)
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=resolve_device(settings.get("device", DEFAULTS.device)),
            image_size=settings.get("image_size"), clip_length=settings.get("clip_length"),
            memory_size=settings.get("memory_size"), memory_threshold=settings.get("memory_threshold"),
            memory_pool_size=settings.get("predictor_memory_pool_size", DEFAULTS.predictor_memory_pool_size),
            bf16=settings.get("test_bf16", DEFAULTS.test_bf16), seed=settings.get("seed", DEFAULTS.seed),
            trusted=args.trust_checkpoint)
        if classes is None:
            results = predictor.segment(video, *supports, keep_frames=True)
        else:
            results = predictor.segment_classes(video, supports, keep_frames=True)

        def meta() -> dict:
            fields: dict[str, Any] = {"checkpoint": args.checkpoint, "weights": predictor.checkpoint,
                                      "video": args.video}
            if classes is None:
                fields.update(supports=list(args.support_images[0]), support_masks=list(args.support_masks[0]))
            else:
                fields["classes"] = {name: {"supports": list(images), "support_masks": list(masks)}
                                     for name, (images, masks) in classes.items()}
            fields.update(**predictor.settings(), fps=video.fps)
            if video.truncation is not None:
                fields["truncated"] = video.truncation
            return fields

        with tqdm(results, total=video.length, desc="segmenting", unit="frame") as progress:
            count = outputs.write(progress, fps=video.fps, meta=meta, classes=None if classes is None else list(classes))
    where = "masks/" if classes is None else f"masks/<class>/ ({len(classes)} classes)"
    logger.info("wrote the masks of %d frames to %s, overlay.mp4 and predictions.json in %s", count, where, args.output)
    return 0


def _prepared(name: str, images: list, masks: list) -> tuple:
    """One class's supports read and checked; the error names the class."""
    try:
        return prepare_supports(images, masks)
    except InputError as error:
        raise InputError(f"--class {name!r}: {error}") from None


if __name__ == "__main__":
    reuse_freed_memory()    # inference re-allocates large buffers every clip (utils/runtime.py)
    sys.exit(run(main))
