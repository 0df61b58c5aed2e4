"""The paper's table: train and test every fold, then J and F per fold and their mean.

    python reproduce.py --folds 1 2 3 4 --test-runs 5                 # the paper's 4-fold table (YouTube-VIS)
    python reproduce.py --dataset minivspw --folds 1 2 3 4            # MiniVSPW
    python reproduce.py --folds 1 2 --data-root D --output-dir O lr=1e-4   # any config key, as in train.py
    python reproduce.py --folds 1 2 3 4 --collect                     # assemble the table from finished folds

Each fold trains in ``<output_dir>/<dataset>_group<G>`` (the run directory of ``train.py --group
G``) as ``train.py --auto-resume`` would: a new run starts, an interrupted one continues exactly,
a finished one is reused. Its ``best.pth`` is then tested with the paper's protocol (``test.py
--runs N``; a current result is reused). The table, per fold and the mean over the folds, goes
to ``<output_dir>/reproduce_<dataset>/results.json`` and ``results.md``; ``reproduce.log`` beside
them says which fold is where. Rerunning the same command continues where it stopped and
retrains nothing that is finished. Folds on several GPUs: one process per GPU with its own
``--folds`` and ``--device cuda:N``, then ``--collect`` (docs/cluster.md).
"""
from __future__ import annotations

import sys
from typing import Sequence

from config.config import NUM_FOLDS
from vipmt.cli import add_config_arguments, explicit_values, run, script_parser
from vipmt.reproduce import reproduce


def build_parser():
    parser = script_parser(__doc__)
    add_config_arguments(parser)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(1, NUM_FOLDS + 1)), metavar="G",
                        help="the folds (groups) to train, test and tabulate")
    parser.add_argument("--collect", action="store_true",
                        help="train and test nothing: write the table from the folds' finished runs and "
                             "current test results (after folds ran in separate processes)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return reproduce(explicit_values(args), folds=args.folds, collect=args.collect,
                     command=["python", "reproduce.py", *argv])


if __name__ == "__main__":
    sys.exit(run(main))
