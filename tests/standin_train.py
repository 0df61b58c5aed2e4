"""train.py with the stand-in network (tests/standin.py), for the tests that kill or signal a training process.

    python tests/standin_train.py TRAIN_PY_ARGUMENTS...

Everything but the network is train.py's own: its command line, run directory, data, loop, hooks,
checkpoints and signal handling. ``STANDIN_SECONDS_PER_CLIP`` (default 0) makes every clip's
forward take that long, so that a signal can arrive while a step runs.
"""
import os
import runpy
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
sys.path[:0] = [REPO, TESTS]

import standin  # noqa: E402

standin.install(seconds_per_clip=float(os.environ.get("STANDIN_SECONDS_PER_CLIP", "0")))
sys.argv = [os.path.join(REPO, "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
