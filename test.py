"""Evaluate VIPMT on a fold's held-out classes.

    python test.py --group 1                                   # the paper's command: runs/<dataset>_group1/best.pth
    python test.py --group 1 --checkpoint path/to/authors.pth  # ours or the authors' format
    python test.py --group 1 --runs 5 --save-vis outputs/vis   # mean ± std over 5 seeds, overlays

Every video of each test class is a query once (all frames where the class is present); its
5 support images come from other videos of the class. The video is segmented clip by clip
(``clip_length`` frames): clip 1 against the supports, later clips against the supports plus
up to ``memory_size`` earlier frames whose predicted score is ``>= memory_threshold``, with
their predicted masks (``models.VideoSegmenter``). Prints per-class and mean J, F, class IoU
and VC_7 and writes them to JSON. ``--runs N`` repeats with seeds seed..seed+N-1 (support
sampling makes single runs noisy) and reports mean ± std.
"""
from __future__ import annotations

import sys
from typing import Sequence

from utils.log import setup_logging
from utils.runtime import reuse_freed_memory
from vipmt.cli import add_config_arguments, add_config_option, explicit_values, run, script_parser
from vipmt.testrun import run_test


def build_parser():
    parser = script_parser(__doc__)
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint to test: ours or the authors' {'state_dict': ...} file "
                             "(default <output_dir>/<run_name>/best.pth); 'none' tests the untrained "
                             "model (backbone from --backbone-weights)")
    add_config_option(parser, "--runs", "test_runs", help="repeat with seeds seed..seed+N-1 (= --test-runs N)")
    parser.add_argument("--output", metavar="JSON", help="results file (default <run dir>/test/test_<checkpoint>_seed<S>.json, log beside it)")
    parser.add_argument("--save-vis", metavar="DIR", help="write per-frame overlays and per-video contact sheets (first run)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that hold arbitrary pickled objects (only for files you trust)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    run_test(explicit_values(args), checkpoint=args.checkpoint, output=args.output, save_vis=args.save_vis,
             trusted=args.trust_checkpoint)       # logs the table; JSON and log in the run directory
    return 0


if __name__ == "__main__":
    reuse_freed_memory()    # inference re-allocates large buffers every clip (utils/runtime.py)
    sys.exit(run(main))
