"""Train VIPMT on one fold (SPEC.md section 7).

    python train.py --group 1                                  # paper settings (config/config.py)
    python train.py --group 1 --device cpu lr=1e-4 epochs=20   # key=value overrides the config
    python train.py --group 1 --resume                         # continue runs/<run>/last.pth
    torchrun --nproc_per_node 4 train.py --group 1             # DDP (NCCL on GPUs, gloo on CPU)

Each training episode is 15 query frames cut into three 5-frame clips and 5 support images
of the same class. Clip 1 is segmented against the supports; clip 2 against the supports plus
the 5 frames of clip 1 with their ground-truth masks; clip 3 against the supports plus 5 frames
drawn at random (sorted) from the 10 earlier frames. The backbone features of supports and
earlier query frames are reused (the backbone runs once per frame). The loss is the sum over
clips. Adam on all trainable parameters; mixed precision with a gradient scaler on CUDA.
After every epoch the fold's held-out classes are validated with the same three-clip scheme
(eval mode); the metric is the mean class IoU.

A run directory ``<output_dir>/<run_name>`` holds ``config.yaml``, ``train.log``,
TensorBoard scalars (``tb/``), ``last.pth`` (every epoch, and every
``checkpoint_every_iters`` iterations), ``best.pth`` and ``epoch_NNN.pth`` every
``save_every`` epochs. All checkpoints are written atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import (ConfigError, apply_overrides, config_to_dict, dataset_root, get_config,
                    read_config_file, save_config, update_config)
from utils import distributed as du
from utils.checkpoint import (CheckpointError, capture_rng_state, is_our_checkpoint, load_checkpoint,
                              load_model_state, restore_rng_state, save_checkpoint)
from utils.fileio import atomic_copy, remove_stale_temporaries
from utils.log import setup_logging
from utils.metrics import FewShotEvaluator
from utils.runtime import (EXIT_FAILURE, RANK_SEED_STRIDE, UserError, resolve_device, run_cli,
                           seed_everything)

logger = logging.getLogger("train")

LOSS_NAMES = ("main", "aux", "contrast", "score")
CHECKPOINT_HINT = ("Expected a VIPMT checkpoint with the reference parameter names (ours, or the authors' "
                   "{'state_dict': ...} file). The score head's size depends on the image size: the "
                   "authors' checkpoints need image_size=240,424.")
LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tb"
VAL_MEMORY_SEED_OFFSET = 7919        # validation memory draws use their own fixed generator
BACKBONE_WEIGHTS_HELP = (
    "Download the deep-stem ResNet-50 ImageNet weights 'resnet50_v2.pth' (the PSPNet/PFENet "
    "'resnet50_v2' file the authors use, see pretrain_model/README.md) to {path}, point "
    "backbone_weights=PATH / --backbone-weights PATH at it, or pass --backbone-weights none "
    "to start from a random backbone (much worse results).")


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


# ================================================================ command line and config
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train.py and test.py (each sets one config key)."""
    parser.add_argument("--group", type=int, help="fold 1..4 (config: group)")
    parser.add_argument("--dataset", choices=("youtube_vis", "minivspw"), help="config: dataset")
    parser.add_argument("--data-root", help="root of the dataset (config: youtube_vis_root / minivspw_root)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (config: device; auto = cuda if available)")
    parser.add_argument("--backbone-weights",
                        help="resnet50_v2.pth path, or 'none' for a random backbone (config: backbone_weights)")
    parser.add_argument("--output-dir", help="where run directories are created (config: output_dir)")
    parser.add_argument("--run-name", help="run directory name (config: run_name; default <dataset>_group<G>)")
    parser.add_argument("--seed", type=int, help="config: seed")
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON file of config values (applied before overrides)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. lr=1e-4 image_size=240,424 (see config/config.py)")


def explicit_values(args: argparse.Namespace) -> Dict[str, Any]:
    """Config values given on the command line (flags, --config file, key=value), checked strictly."""
    values: Dict[str, Any] = {}
    if args.config:
        values.update(read_config_file(args.config))
    flag_keys = {"group": "group", "dataset": "dataset", "device": "device", "backbone_weights": "backbone_weights",
                 "output_dir": "output_dir", "run_name": "run_name", "seed": "seed"}
    for attr, key in flag_keys.items():
        if getattr(args, attr, None) is not None:
            values[key] = getattr(args, attr)
    # key=value overrides: parsed and validated against a scratch config
    scratch = update_config(get_config(), values)
    apply_overrides(scratch, args.overrides)
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        values[key] = scratch[key]
    if args.data_root is not None:
        dataset = values.get("dataset", scratch.dataset)
        values["youtube_vis_root" if dataset == "youtube_vis" else "minivspw_root"] = args.data_root
    return values


def resolve_config(base: Dict[str, Any], values: Dict[str, Any]):
    cfg = update_config(get_config(), {k: v for k, v in base.items() if k in get_config()})
    return update_config(cfg, values)


def run_directory(cfg) -> str:
    name = cfg.run_name or f"{cfg.dataset}_group{cfg.group}"
    return os.path.join(cfg.output_dir, name)


# ================================================================ data and model
def dataset_missing_message(cfg) -> str:
    root = dataset_root(cfg)
    if cfg.dataset == "youtube_vis":
        expected = "train/train.json and train/JPEGImages/<video>/<frame>.jpg"
        synthetic = "python -m dataset.synthetic youtube_vis --root data/synthetic_ytvis"
        flag = "--data-root data/synthetic_ytvis"
    else:
        expected = "data/<video>/origin, data/<video>/mask and lists/"
        synthetic = "python -m dataset.synthetic vspw --root data/synthetic_vspw"
        flag = "--dataset minivspw --data-root data/synthetic_vspw"
    return (f"dataset {cfg.dataset!r} not found at {root!r} (expected {expected}). Download it "
            f"(see data/README.md) and pass --data-root PATH, or try the built-in demo on a "
            f"synthetic dataset: `python demo.py`, or write one with `{synthetic}` and "
            f"add `{flag}` to this command.")


def build_split(cfg, split: str, episodes_per_class: int, seed: int, augment: bool):
    """The dataset of one split, with user-facing errors."""
    from dataset import build_dataset  # noqa: WPS433 - heavy import kept out of --help

    root = dataset_root(cfg)
    if not os.path.exists(root):
        raise UserError(dataset_missing_message(cfg))
    return build_dataset(name=cfg.dataset, root=root, split=split, group=cfg.group,
                         image_size=tuple(cfg.image_size), query_frames=cfg.query_frames,
                         support_shots=cfg.support_shots, episodes_per_class=episodes_per_class,
                         seed=seed, augment=augment, clip_length=cfg.clip_length,
                         letterbox_per_frame=cfg.letterbox_per_frame)


def backbone_weights_path(cfg, required: bool, warn: bool = True) -> Optional[str]:
    """The backbone weight file to build the model with, or None (random backbone).

    ``required=False`` (resuming, or loading a checkpoint that holds the backbone): None.
    """
    value = cfg.backbone_weights
    if value.lower() in ("none", ""):
        if required and warn:
            logger.warning("training from a RANDOM backbone (--backbone-weights none): expect much "
                           "worse results than with the ImageNet weights resnet50_v2.pth")
        return None
    if not required:
        return None
    if not os.path.isfile(value):
        raise UserError(f"backbone weights not found: {value!r}. " + BACKBONE_WEIGHTS_HELP.format(path=value))
    return value


def build_model(cfg, backbone_weights: Optional[str]):
    from models import VIPMT  # noqa: WPS433
    from models.losses import LossWeights

    weights = LossWeights(main=cfg.loss_weight_main, aux=cfg.loss_weight_aux,
                          contrast=cfg.loss_weight_contrast, score=cfg.loss_weight_score)
    return VIPMT(backbone_weights=backbone_weights, image_size=tuple(cfg.image_size), loss_weights=weights)


def collate_episodes(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack the tensors of fixed-length episodes; other values become lists."""
    out: Dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


# ================================================================ the trainer
class Trainer:
    """Owns model, optimizer, scaler, data and the loop; ``fit`` runs the epochs."""

    def __init__(self, cfg, dist_info: du.DistInfo, device: torch.device, run_dir: str,
                 resume_ckpt: Optional[Dict[str, Any]]):
        from dataset import DifferentClassBatchSampler  # noqa: WPS433

        self.cfg, self.dist, self.device, self.run_dir = cfg, dist_info, device, run_dir
        self.use_amp = bool(cfg.amp) and device.type == "cuda"

        self.train_set = build_split(cfg, "train", cfg.episodes_per_class, cfg.seed, augment=True)
        self.val_set = build_split(cfg, "val", cfg.val_episodes_per_class, cfg.seed, augment=False)
        self.sampler = DifferentClassBatchSampler(self.train_set, batch_size=cfg.batch_size, seed=cfg.seed,
                                                  num_replicas=dist_info.world_size, rank=dist_info.rank)
        if self.sampler.batches_per_epoch() == 0:
            raise UserError(f"the train split gives no batch of batch_size={cfg.batch_size} on each of "
                            f"{dist_info.world_size} process(es); lower batch_size or raise episodes_per_class")

        weights = None if resume_ckpt is not None else backbone_weights_path(cfg, required=True)
        seed_everything(cfg.seed)                            # the initial weights depend on the seed only
        self.model = build_model(cfg, weights).to(device)
        # DDP wraps the network; each clip's forward is followed by its own backward
        # (models.episode.train_episode), so DDP sees matched forward/backward pairs.
        if dist_info.distributed:
            self.train_module: nn.Module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            self.train_module = self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.num_trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # Memory frames of clips 2-3 are drawn from this generator (state saved in checkpoints).
        self.memory_generator = torch.Generator()

        self.start_epoch, self.start_iter, self.global_step = 0, 0, 0
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.history: List[Dict[str, Any]] = []
        self._resume_rng: Optional[Dict[str, Any]] = None
        self._running: Dict[str, float] = {}                 # running means of the current epoch
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        self.writer = None
        if dist_info.is_main:
            from torch.utils.tensorboard import SummaryWriter  # noqa: WPS433

            self.writer = SummaryWriter(os.path.join(run_dir, TENSORBOARD_DIR), purge_step=self.global_step)
        logger.info("train: %s; val: %s; %d trainable parameters; device %s%s; AMP %s",
                    self.train_set, self.val_set, self.num_trainable, device,
                    f" x {dist_info.world_size} processes" if dist_info.distributed else "",
                    "on" if self.use_amp else "off")

    # -------------------------------------------------------------- checkpoints
    def _restore(self, ckpt: Dict[str, Any]) -> None:
        load_model_state(self.model, ckpt["state_dict"], source="resume checkpoint", hint=CHECKPOINT_HINT)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"resume checkpoint: the optimizer state does not fit the model ({exc})") from None
        if ckpt.get("scaler") and self.use_amp:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.start_iter = int(ckpt.get("iteration", 0))
        self.global_step = int(ckpt.get("global_step", 0))
        self.best_metric = ckpt.get("best_metric")
        self.best_epoch = ckpt.get("best_epoch")
        self.history = list((ckpt.get("metrics") or {}).get("history", []))
        saved_world = int(ckpt.get("world_size", 1))
        rng_states = ckpt.get("rng") or []
        if self.start_iter > 0 and (saved_world != self.dist.world_size or len(rng_states) != saved_world):
            logger.warning("the checkpoint was taken inside epoch %d with %d process(es), now %d: that "
                           "epoch restarts from its first iteration", self.start_epoch + 1, saved_world,
                           self.dist.world_size)
            self.global_step -= self.start_iter
            self.start_iter = 0
        elif self.start_iter > 0:
            self._resume_rng = rng_states[self.dist.rank]
            self._running = dict(ckpt.get("epoch_running") or {})
        logger.info("resumed after epoch %d%s (step %d, best mean class IoU %s)", self.start_epoch,
                    f" + {self.start_iter} iterations" if self.start_iter else "", self.global_step,
                    "n/a" if self.best_metric is None else f"{self.best_metric:.4f}")

    def save(self, name: str, epoch: int, iteration: int) -> Optional[str]:
        """Save a checkpoint atomically: every rank contributes its RNG state, rank 0 writes."""
        state = capture_rng_state()
        state["memory_generator"] = self.memory_generator.get_state()
        rng_states = du.all_gather_object(state)
        path = None
        if self.dist.is_main:
            sampler_state = dict(self.sampler.state_dict(), epoch=epoch, start_batch=iteration)
            path = save_checkpoint(
                os.path.join(self.run_dir, name), model=self.model, optimizer=self.optimizer,
                scaler=self.scaler, epoch=epoch, iteration=iteration, global_step=self.global_step,
                config=self.cfg, best_metric=self.best_metric, best_epoch=self.best_epoch,
                sampler_state=sampler_state, rng_states=rng_states, metrics={"history": self.history},
                extra={"world_size": self.dist.world_size, "epoch_running": dict(self._running)})
        du.barrier()
        return path

    # -------------------------------------------------------------- one step
    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _check_finite(self, clip_loss: torch.Tensor, epoch: int, iteration: int, clip: int) -> None:
        """Stop every rank together when a loss is NaN/inf (before it reaches the weights)."""
        bad = du.all_reduce_sum(0.0 if bool(torch.isfinite(clip_loss.detach()).all()) else 1.0)
        if bad:
            last = os.path.join(self.run_dir, LAST_CHECKPOINT)
            keep = (f"the last good checkpoint {last!r} is kept (continue with --resume)"
                    if os.path.exists(last) else "no checkpoint had been written yet")
            raise TrainingError(f"non-finite loss ({float(clip_loss.detach()):.4g}) in clip {clip} at epoch "
                                f"{epoch + 1}, iteration {iteration + 1}; training stopped before the weights "
                                f"were updated; {keep}. Try a lower learning rate (lr=...) or amp=false.")

    def train_step(self, batch: Dict[str, Any], epoch: int, iteration: int) -> Dict[str, float]:
        from models.episode import plan_episode, train_episode  # noqa: WPS433

        cfg = self.cfg
        tensors = [batch[k].to(self.device, non_blocking=True)
                   for k in ("query_img", "query_mask", "support_img", "support_mask")]
        plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, self.memory_generator)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        clip_counter = iter(range(1, len(plans) + 1))

        def backward(loss: torch.Tensor) -> None:
            self._check_finite(loss, epoch, iteration, next(clip_counter))
            with torch.autocast(device_type=self.device.type, enabled=False):   # backward outside autocast
                self.scaler.scale(loss).backward()

        with self._autocast():
            results = train_episode(self.train_module, *tensors, plans, backward=backward)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        names = ["loss"] + [f"{n}_loss" for n in LOSS_NAMES]
        values = torch.stack([sum(r[n].float() for r in results) for n in names])
        values = du.all_reduce_mean(values).tolist()
        return {n.replace("_loss", "") if n != "loss" else n: v for n, v in zip(names, values)}

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> Dict[str, Any]:
        """Mean class IoU on the val split: the three-clip scheme in eval mode (GT-mask memory)."""
        from models.episode import plan_episode, predict_episode  # noqa: WPS433

        cfg = self.cfg
        self.model.eval()
        self.val_set.set_epoch(0)                        # the same episodes at every validation
        indices = list(range(self.dist.rank, len(self.val_set), self.dist.world_size))
        batches = [indices[i:i + cfg.val_batch_size] for i in range(0, len(indices), cfg.val_batch_size)]
        loader = DataLoader(self.val_set, batch_sampler=batches, num_workers=cfg.num_workers,
                            collate_fn=collate_episodes, pin_memory=self.device.type == "cuda")
        generator = torch.Generator().manual_seed(cfg.seed + VAL_MEMORY_SEED_OFFSET)
        evaluator = FewShotEvaluator(boundary=False, consistency=False)
        for batch in tqdm(loader, desc="validate", leave=False, disable=not self.dist.is_main, dynamic_ncols=True):
            tensors = [batch[k].to(self.device) for k in ("query_img", "query_mask", "support_img", "support_mask")]
            plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, generator)
            with self._autocast():
                pred, _score = predict_episode(self.model, *tensors, plans)
            gt = tensors[1][:, :, 0]
            for b, class_id in enumerate(batch["class_id"]):
                evaluator.add_video(class_id, pred[b].cpu(), gt[b].cpu())
        merged = FewShotEvaluator(boundary=False, consistency=False)
        for part in du.all_gather_object(evaluator):       # every rank gets every rank's counts
            merged.merge(part)
        return {"class_iou": merged.class_iou(), "mean_class_iou": merged.mean_class_iou()}

    # -------------------------------------------------------------- the loop
    def _start_epoch(self, epoch: int, start_iter: int) -> None:
        cfg = self.cfg
        if start_iter == 0:
            seed = cfg.seed + epoch + self.dist.rank * RANK_SEED_STRIDE
            seed_everything(seed)                             # SPEC 7: re-seeded with seed + epoch
            self.memory_generator.manual_seed(seed)
        else:                                                 # mid-epoch resume: continue the streams
            restore_rng_state(self._resume_rng)
            self.memory_generator.set_state(self._resume_rng["memory_generator"])
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_iter)

    def fit(self, stop_after: Optional[int] = None) -> str:
        """Train from the current state to ``cfg.epochs``; 'finished' or 'stopped' (--stop-after)."""
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg.epochs):
            start_iter = self.start_iter if epoch == self.start_epoch else 0
            self._start_epoch(epoch, start_iter)
            loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                collate_fn=collate_episodes, pin_memory=self.device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            total_iters = self.sampler.batches_per_epoch()
            if start_iter == 0:
                self._running = {}
            running = self._running
            bar = tqdm(loader, total=total_iters, initial=start_iter, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not self.dist.is_main, dynamic_ncols=True)
            started = time.time()
            for iteration, batch in enumerate(bar, start=start_iter):
                losses = self.train_step(batch, epoch, iteration)
                self.global_step += 1
                count = iteration + 1
                for k, v in losses.items():
                    running[k] = running.get(k, 0.0) + (v - running.get(k, 0.0)) / count
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
                if self.writer is not None and self.global_step % cfg.log_every == 0:
                    for k, v in losses.items():
                        self.writer.add_scalar(f"train/{k}", v, self.global_step)
                done = iteration + 1
                stopping = stop_after is not None and self.global_step >= stop_after
                periodic = cfg.checkpoint_every_iters and done % cfg.checkpoint_every_iters == 0
                if done < total_iters and (stopping or periodic):
                    self.save(LAST_CHECKPOINT, epoch, done)
                if stopping and done < total_iters:
                    bar.close()
                    logger.info("stopped after %d steps (--stop-after), inside epoch %d at iteration %d/%d; "
                                "continue with --resume", self.global_step, epoch + 1, done, total_iters)
                    return "stopped"
            bar.close()
            self._end_epoch(epoch, running, time.time() - started)
            if stop_after is not None and self.global_step >= stop_after and epoch + 1 < cfg.epochs:
                logger.info("stopped after %d steps (--stop-after) at the end of epoch %d; continue "
                            "with --resume", self.global_step, epoch + 1)
                return "stopped"
        return "finished"

    def _end_epoch(self, epoch: int, running: Dict[str, float], seconds: float) -> None:
        """Validate, log, and write last / best / periodic checkpoints."""
        cfg = self.cfg
        logger.info("epoch %d/%d: %s (%.0f s)", epoch + 1, cfg.epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in running.items()), seconds)
        record: Dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in running.items()}}
        improved = False
        if (epoch + 1) % cfg.validate_every == 0 or epoch + 1 == cfg.epochs:
            val = self.validate()
            metric = val["mean_class_iou"]
            record["val_mean_class_iou"] = metric
            record["val_class_iou"] = {str(k): v for k, v in val["class_iou"].items()}
            improved = math.isfinite(metric) and (self.best_metric is None or metric > self.best_metric)
            if improved:
                self.best_metric, self.best_epoch = metric, epoch + 1
            logger.info("validation after epoch %d: mean class IoU %.4f (best %.4f, epoch %s)", epoch + 1,
                        metric, self.best_metric if self.best_metric is not None else float("nan"), self.best_epoch)
            if self.writer is not None:
                self.writer.add_scalar("val/mean_class_iou", metric, epoch + 1)
        self.history.append(record)
        if self.writer is not None:
            for k, v in running.items():
                self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            self.writer.flush()
        last = self.save(LAST_CHECKPOINT, epoch + 1, 0)
        if self.dist.is_main:                # best / periodic: the same file (hard link when possible)
            if improved:
                atomic_copy(last, os.path.join(self.run_dir, BEST_CHECKPOINT))
            if (epoch + 1) % cfg.save_every == 0:
                atomic_copy(last, os.path.join(self.run_dir, f"epoch_{epoch + 1:03d}.pth"))
        du.barrier()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ================================================================ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in <output_dir>/<run_name> from its last.pth")
    parser.add_argument("--resume-from", metavar="CHECKPOINT",
                        help="continue the run that wrote this checkpoint (its directory is the run directory)")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop (as if interrupted, after saving last.pth) once this many "
                             "optimizer steps are done in total; continue with --resume")
    return parser


def find_resume_checkpoint(args, cfg) -> str:
    if not args.resume_from:
        path = os.path.join(run_directory(cfg), LAST_CHECKPOINT)
        if not os.path.isfile(path):
            raise UserError(f"--resume: nothing to resume, {path!r} does not exist (the run "
                            f"{run_directory(cfg)!r} has not saved a checkpoint yet). Start without "
                            f"--resume, or pass --resume PATH / --run-name NAME of an earlier run.")
        return path
    if not os.path.isfile(args.resume_from):
        raise UserError(f"--resume-from: checkpoint {args.resume_from!r} does not exist")
    return args.resume_from


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    values = explicit_values(args)
    cfg = resolve_config({}, values)

    resume_ckpt = None
    if args.resume or args.resume_from:
        path = find_resume_checkpoint(args, cfg)
        resume_ckpt = load_checkpoint(path)
        if not is_our_checkpoint(resume_ckpt) or resume_ckpt.get("optimizer") is None:
            raise UserError(f"--resume: {path!r} is not a resumable training checkpoint of this "
                            f"project (it has no optimizer/epoch state); test it with test.py --checkpoint")
        saved = resume_ckpt.get("config") or {}
        cfg = resolve_config(saved, values)
        changed = {k: (saved.get(k), v) for k, v in config_to_dict(cfg).items() if saved.get(k) != v}
        if changed:
            logger.warning("resuming with changed config values: %s",
                           ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        run_dir = os.path.dirname(os.path.abspath(path))
    else:
        run_dir = run_directory(cfg)

    # Inputs are checked before anything is written.
    if resume_ckpt is None:
        backbone_weights_path(cfg, required=True, warn=False)
        if os.path.exists(os.path.join(run_dir, LAST_CHECKPOINT)):
            raise UserError(f"run directory {run_dir!r} already holds a checkpoint ({LAST_CHECKPOINT}); "
                            f"pass --resume to continue it, or choose another --run-name / --output-dir")
    if not os.path.exists(dataset_root(cfg)):
        raise UserError(dataset_missing_message(cfg))
    device_type = resolve_device(cfg.device).type

    dist_info = du.init_distributed(device_type)
    try:
        device = resolve_device(cfg.device, dist_info.local_rank)
        if dist_info.is_main:
            os.makedirs(run_dir, exist_ok=True)
        du.barrier()
        setup_logging(os.path.join(run_dir, LOG_FILE), rank=dist_info.rank)
        if dist_info.is_main:
            for name in remove_stale_temporaries(run_dir):
                logger.info("removed %s (a write interrupted by an earlier crash)", name)
            save_config(cfg, os.path.join(run_dir, CONFIG_FILE))
        logger.info("run directory %s; command: %s", run_dir, " ".join([os.path.basename(sys.argv[0])] + list(argv)))
        trainer = Trainer(cfg, dist_info, device, run_dir, resume_ckpt)
        try:
            status = trainer.fit(stop_after=args.stop_after)
        except TrainingError as exc:
            logger.error("%s", exc)
            if dist_info.is_main:
                print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            trainer.close()
        if status == "finished" and dist_info.is_main:
            logger.info("training finished: best mean class IoU %s at epoch %s; checkpoints in %s",
                        "n/a" if trainer.best_metric is None else f"{trainer.best_metric:.4f}",
                        trainer.best_epoch, run_dir)
        return 0
    finally:
        du.cleanup_distributed()


def user_error_types():
    from dataset import DatasetError  # noqa: WPS433
    from models import ModelError  # noqa: WPS433

    return (UserError, ConfigError, CheckpointError, DatasetError, ModelError)


if __name__ == "__main__":
    sys.exit(run_cli(main, None, user_error_types()))
