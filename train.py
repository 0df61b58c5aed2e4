"""Train VIPMT on one fold.

    python train.py --group 1 --batch_size 4                   # the paper's command (config/config.py settings)
    python train.py --group 1 --lr 1e-4 --epochs 20            # any config key as --key value (or key=value)
    python train.py --group 1 --resume                         # continue runs/<run>/last.pth
    python train.py --group 1 --resume --lr 1e-4               # continue with another learning rate
    python train.py --group 1 --auto-resume                    # resume if last.pth exists, else start (requeued jobs)
    torchrun --nproc_per_node 4 train.py --group 1             # DDP (NCCL on GPUs, gloo on CPU)
    torchrun --nproc_per_node 4 --max-restarts 3 train.py --group 1 --auto-resume   # restart failed workers

Each training episode is 15 query frames cut into three 5-frame clips and 5 support images
of the same class. Clip 1 is segmented against the supports; clip 2 against the supports plus
the 5 frames of clip 1 with their ground-truth masks; clip 3 against the supports plus 5 frames
drawn at random (sorted) from the 10 earlier frames. The backbone features of supports and
earlier query frames are reused (the backbone runs once per frame). The loss is the sum over
clips. Adam on all trainable parameters; mixed precision with a gradient scaler on CUDA.
After every epoch the fold's held-out classes are validated with the same three-clip scheme
(eval mode); the metric is the mean class IoU.

A run directory ``<output_dir>/<run_name>`` holds ``config.yaml``, ``train.log``,
``metrics.jsonl`` (one line per epoch), TensorBoard scalars (``tb/``), ``last.pth`` (every
epoch, and every ``checkpoint_every_iters`` iterations), ``best.pth`` and, every
``save_every`` epochs, ``epoch_NNN.pth`` (weights only unless periodic_checkpoint_full=true).
All checkpoints are written atomically. One run at a time per directory (a second train.py on
it is refused, naming the first one's pid and host); a directory that holds a trained run is
never started over. Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP finishes the current step, saves
last.pth and exits with status 75; --resume continues exactly. A resume may change
lr, betas, weight_decay, epochs and the other settings that do not define the run; it refuses
to change the ones that do (image_size, batch_size, group, ...: config/config.py marks them).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from vipmt.cli import add_config_arguments, explicit_values, run, script_parser
from vipmt.run import run_training


def build_parser():
    parser = script_parser(__doc__)
    add_config_arguments(parser)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the run in <output_dir>/<run_name> from its last.pth")
    resume.add_argument("--resume-from", metavar="CHECKPOINT",
                        help="continue the run that wrote this checkpoint (its directory is the run directory)")
    resume.add_argument("--auto-resume", action="store_true",
                        help="continue the run if <output_dir>/<run_name> holds last.pth, else start it: the "
                             "same command line serves the first start and every restart (torchrun "
                             "--max-restarts, a requeued cluster job)")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop (as if interrupted, after saving last.pth) once this many "
                             "optimizer steps are done in total; continue with --resume")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return run_training(explicit_values(args), resume=args.resume, resume_from=args.resume_from,
                        auto_resume=args.auto_resume, stop_after=args.stop_after,
                        command=[os.path.basename(sys.argv[0]), *argv])


if __name__ == "__main__":
    sys.exit(run(main))
