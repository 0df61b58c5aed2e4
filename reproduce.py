"""The paper's table: train and test every fold, then J and F per fold and their mean.

    python reproduce.py --folds 1 2 3 4 --test-runs 5                 # the paper's 4-fold table (YouTube-VIS)
    python reproduce.py --dataset minivspw --folds 1 2 3 4            # MiniVSPW
    python reproduce.py --folds 1 2 --data-root D --output-dir O lr=1e-4   # any config key, as in train.py
    python reproduce.py --folds 1 2 3 4 --collect                     # assemble the table from finished folds
    python reproduce.py --data-root D --output-dir O --folds 3 lr=1e-4     # fold 3 joins O's table of folds 1 2

Each fold trains in ``<output_dir>/<dataset>_group<G>`` (the run directory of ``train.py --group
G``) as ``train.py --auto-resume`` would: a new run starts, an interrupted one continues exactly,
a finished one is reused. Its ``best.pth`` is then tested with the paper's protocol (``test.py
--runs N``; a current result is reused). The table, per fold and the mean over the folds, goes
to ``<output_dir>/reproduce_<dataset>/results.json`` and ``results.md``; ``reproduce.log`` beside
them says which fold is where. Rerunning the same command continues where it stopped and
retrains nothing that is finished. A run trained with other settings than those asked for is
refused (the table credits only what its runs were trained with); a narrower ``--folds`` keeps
the table's other folds when they are current (``--drop-other-folds`` drops them). Folds on
several GPUs: one process per GPU with its own ``--folds`` and ``--device cuda:N``, then
``--collect`` (docs/cluster.md).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence, Union

from config.config import NUM_FOLDS
from vipmt.cli import add_config_arguments, explicit_values, run, script_parser
from vipmt.reproduce import reproduce


def fold_or_override(text: str) -> Union[int, str]:
    """A --folds word: a fold number, or a key=value override that follows the folds
    (``--folds 1 2 lr=0.01``: argparse hands the override to --folds; main moves it back)."""
    if "=" in text:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number 1..{NUM_FOLDS}, got {text!r}") from None


def build_parser():
    parser = script_parser(__doc__)
    add_config_arguments(parser)
    parser.add_argument("--folds", type=fold_or_override, nargs="+", default=list(range(1, NUM_FOLDS + 1)),
                        metavar="G", help="the folds (groups) to train, test and tabulate")
    parser.add_argument("--collect", action="store_true",
                        help="train and test nothing: write the table from the folds' finished runs and "
                             "current test results (after folds ran in separate processes)")
    parser.add_argument("--drop-other-folds", action="store_true",
                        help="write a table of --folds only, dropping the other folds an existing table holds "
                             "(by default they are kept when their runs and test results are current)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    args.overrides = [*args.overrides, *(f for f in args.folds if isinstance(f, str))]
    folds = [f for f in args.folds if isinstance(f, int)]
    return reproduce(explicit_values(args), folds=folds, collect=args.collect,
                     drop_other_folds=args.drop_other_folds, command=["python", "reproduce.py", *argv])


if __name__ == "__main__":
    sys.exit(run(main))
