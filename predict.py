"""Segment an object class in your own video, given 1-5 annotated support images.

    python predict.py --checkpoint runs/youtube_vis_group1/best.pth \\
        --video my_video.mp4 \\
        --support-images cat1.jpg cat2.jpg --support-masks cat1.png cat2.png \\
        --output outputs/my_video

The video is a video file (anything OpenCV reads) or a folder of frames (sorted by name).
Support masks are PNGs of the support images' size, 0/255 or 0/1 (object = nonzero). Frames
are letterboxed to the model's input size, segmented clip by clip with reliable memory
(`models.VideoSegmenter`), and the masks are mapped back to the original resolution.

Writes into --output: masks/<frame>.png (0/255, original size), overlay.mp4 (object in red) and
predictions.json (per-frame predicted IoU score and object fraction).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dataset.transforms import TestTransform, letterbox_geometry
from models import VideoSegmenter
from utils.fileio import atomic_write_json
from utils.runtime import UserError, resolve_device, reuse_freed_memory
from vipmt.cli import run
from vipmt.loading import load_trained_model

logger = logging.getLogger("predict")

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_SUPPORTS = 5
DEFAULT_FPS = 10.0
OVERLAY_COLOR_BGR = np.array([0, 0, 255], dtype=np.float32)
OVERLAY_ALPHA = 0.5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="trained weights: our checkpoint or the authors' {'state_dict': ...} file")
    parser.add_argument("--video", required=True, metavar="PATH", help="video file or folder of frames")
    parser.add_argument("--support-images", nargs="+", required=True, metavar="IMG")
    parser.add_argument("--support-masks", nargs="+", required=True, metavar="PNG",
                        help="one mask per support image, same order")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="model input size (default: the checkpoint's config, else 240 424)")
    parser.add_argument("--memory-threshold", type=float, default=0.8)
    parser.add_argument("--memory-size", type=int, default=5)
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (CUDA, or CPUs with AVX512-BF16: ~1.9x faster there)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the memory-frame draws")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints with arbitrary pickled objects (files you trust only)")
    return parser


# ------------------------------------------------------------------ inputs
def read_rgb(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path!r} (missing or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str, image_path: str, image_shape: tuple) -> np.ndarray:
    """A 0/255 or 0/1 PNG -> 0/1 uint8 [h,w], checked against its support image."""
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise UserError(f"cannot read support mask {path!r} (missing or not an image)")
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)
    values = set(np.unique(mask).tolist())
    if not values <= {0, 1} and not values <= {0, 255}:
        raise UserError(f"support mask {path!r} has values {sorted(values)[:6]}; expected 0/255 or 0/1")
    if mask.shape[:2] != image_shape[:2]:
        raise UserError(f"support mask {path!r} is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{image_path!r} is {image_shape[1]}x{image_shape[0]}; they must match")
    mask = (mask > 0).astype(np.uint8)
    if not mask.any():
        raise UserError(f"support mask {path!r} is empty: it must mark the object in {image_path!r}")
    return mask


def read_supports(images: Sequence[str], masks: Sequence[str]):
    if len(images) > MAX_SUPPORTS:
        raise UserError(f"{len(images)} support images given; at most {MAX_SUPPORTS} are used")
    if len(masks) != len(images):
        lacking = images[len(masks):] or ["(none)"]
        raise UserError(f"every support image needs a mask: {len(images)} images but {len(masks)} masks "
                        f"(no mask for {', '.join(lacking)})" if len(masks) < len(images) else
                        f"{len(masks)} masks for {len(images)} support images; give one mask per image")
    rgb = [read_rgb(p) for p in images]
    return rgb, [read_mask(m, p, img.shape) for m, p, img in zip(masks, images, rgb)]


def read_video(path: str) -> tuple[list[np.ndarray], list[str], float]:
    """Frames (RGB uint8), their names and the frame rate of a video file or a frame folder."""
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
        if not names:
            raise UserError(f"folder {path!r} has no frames ({', '.join(FRAME_EXTENSIONS)})")
        frames = [read_rgb(os.path.join(path, n)) for n in names]
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise UserError(f"frames in {path!r} differ in size ({sorted(sizes)[:3]}); a video has one size")
        return frames, [os.path.splitext(n)[0] for n in names], DEFAULT_FPS
    if not os.path.isfile(path):
        raise UserError(f"video {path!r} does not exist (give a video file or a folder of frames)")
    capture = cv2.VideoCapture(path)
    frames = []
    while capture.isOpened():
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
    capture.release()
    if not frames:
        raise UserError(f"cannot read any frame from video {path!r} (unreadable or unsupported format)")
    return frames, [f"{i:05d}" for i in range(len(frames))], float(fps)


# ------------------------------------------------------------------ outputs
def unletterbox(mask: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """A [H,W] model-size mask -> the original [h,w] frame size (nearest)."""
    h, w = original
    new_h, new_w, top, left = letterbox_geometry(h, w, *mask.shape)
    crop = mask[top:top + new_h, left:left + new_w].astype(np.uint8)
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)


def overlay(frame_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    on = mask > 0
    bgr[on] = (1 - OVERLAY_ALPHA) * bgr[on] + OVERLAY_ALPHA * OVERLAY_COLOR_BGR
    return bgr.astype(np.uint8)


def write_outputs(out_dir: str, frames, names, masks, scores, fps: float, meta: dict) -> None:
    mask_dir = os.path.join(out_dir, "masks")
    os.makedirs(mask_dir, exist_ok=True)
    h, w = frames[0].shape[:2]
    video_path = os.path.join(out_dir, "overlay.mp4")
    partial = os.path.join(out_dir, ".overlay.partial.mp4")
    writer = cv2.VideoWriter(partial, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"cannot write {video_path!r}: OpenCV has no mp4 encoder here")
    for frame, name, mask in zip(frames, names, masks):
        cv2.imwrite(os.path.join(mask_dir, f"{name}.png"), mask * 255)
        writer.write(overlay(frame, mask))
    writer.release()
    os.replace(partial, video_path)
    records = [{"frame": n, "score": float(s), "object_fraction": float(m.mean())}
               for n, s, m in zip(names, scores, masks)]
    atomic_write_json(os.path.join(out_dir, "predictions.json"), {**meta, "frames": records})


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    support_rgb, support_masks = read_supports(args.support_images, args.support_masks)
    frames, names, fps = read_video(args.video)
    model = load_trained_model(args.checkpoint, device=device, image_size=args.image_size,
                               trusted=args.trust_checkpoint).model
    transform = TestTransform(model.image_size)
    support_img, support_mask = transform(support_rgb, support_masks)
    query_img, _ = transform(frames, [np.zeros(f.shape[:2], np.uint8) for f in frames])
    segmenter = VideoSegmenter(model, memory_threshold=args.memory_threshold, memory_size=args.memory_size,
                               autocast_dtype=torch.bfloat16 if args.bf16 else None)
    with tqdm(total=len(frames), desc="segmenting", unit="frame") as bar:
        result = segmenter.segment(query_img, support_img, support_mask,
                                   generator=torch.Generator().manual_seed(args.seed),
                                   progress=lambda done: bar.update(done - bar.n))
    masks = [unletterbox(m, f.shape[:2]) for m, f in zip(result.pred.numpy(), frames)]
    meta = {"checkpoint": args.checkpoint, "video": args.video, "supports": list(args.support_images),
            "image_size": list(model.image_size), "fps": fps}
    write_outputs(args.output, frames, names, masks, result.score.tolist(), fps, meta)
    logger.info("wrote %d masks, overlay.mp4 and predictions.json to %s", len(masks), args.output)
    return 0


if __name__ == "__main__":
    reuse_freed_memory()    # inference re-allocates large buffers every clip (utils/runtime.py)
    sys.exit(run(main))
