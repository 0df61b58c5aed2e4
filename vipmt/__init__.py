"""The VIPMT library layer: what the scripts (train.py, test.py, predict.py, demo.py, reproduce.py) share.

    from vipmt import Predictor      # segment any video from a few annotated images
    from vipmt import VIPMTError     # the one base class of the API's errors (InputError, ...)

    vipmt.cli         command-line plumbing: the scripts' parser (every config key an option,
                      from config.cli), config resolution, user errors
    vipmt.build       datasets, model, optimizer and run directory from a resolved config
    vipmt.loading     load_trained_model: our checkpoints and the authors' files, one loader
    vipmt.training    the training loop: Trainer (receives model, optimizer, scaler, episode, data,
                      hooks; builds none), TrainerState (where a run stands), HookBase
    vipmt.checkpointer  a run's checkpoints: Checkpointer (save, restore), CheckpointHook
    vipmt.hooks       around the steps: logging, metrics file; default_hooks
    vipmt.validation  training's validation (the val episodes) and its ValidationHook
    vipmt.run         a whole train.py run: run directory, resume config, DDP, signals, exit status
    vipmt.rundir      what a run directory holds: the one rule for "a trained run is here"
    vipmt.signals     the stop signals (Ctrl-C, SIGTERM, SIGUSR1, SIGHUP): stop after the step, save, exit 75
    vipmt.evaluation  the test protocol over a split: runs, aggregation, the metrics table
    vipmt.segmenter   the video engine test.py runs, from the config (memory, precision, compile)
    vipmt.testrun     a whole test.py run: config, model under test, results file, lock
    vipmt.reproduce   every fold trained (or continued, or reused) and tested: the paper's table
    vipmt.predictor   Predictor (segment, segment_classes, segment_many, start / start_classes)
    vipmt.session     Session / ClassesSession: one video frame by frame, for one class or several
    vipmt.video       the reading of videos, frame folders, arrays and tensors (VideoSource)
    vipmt.inputs      frames and supports: images and masks read and checked
    vipmt.errors      VIPMTError, the API's one base class of errors, and its kinds (InputError, ...)
    vipmt.outputs     predict.py's output folder, written all or nothing
    vipmt.export      python -m vipmt.export: a checkpoint's weights, settings and integrity
                      record in a file to share (no optimizer state; --half: float16 weights)

It sits between the scripts and the packages below it (models, dataset, config, utils), which
never import it.
"""
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
LIBRARY_PACKAGES = ("utils", "config", "models", "dataset")   # top-level packages of this repository, lowest layer first


def _use_repository_packages() -> None:
    """Make this repository's top-level packages importable for an installed `vipmt` (pyproject.toml)
    without shadowing anybody's: the repository goes to the END of sys.path, and each name must
    then resolve here; another project's `utils` or `config` found first is an ImportError."""
    if not any(Path(p or ".").resolve() == REPOSITORY for p in sys.path):
        sys.path.append(str(REPOSITORY))
    for name in LIBRARY_PACKAGES:
        already = name in sys.modules
        try:
            origin = getattr(__import__(name), "__file__", None)   # plain import: the layer rule forbids importlib
        except ImportError as error:
            raise ImportError(f"vipmt needs its own top-level package {name!r} ({REPOSITORY / name}): {error}") from error
        if origin is None or not Path(origin).resolve().is_relative_to(REPOSITORY / name):
            raise ImportError(
                f"vipmt needs its own top-level package {name!r} ({REPOSITORY / name}), but {name!r} "
                f"{'was already imported' if already else 'resolves'} from {origin or 'a namespace package'}. "
                f"Rename or move that {name!r} (e.g. a {name}.py beside your notebook), or run from another folder")


_use_repository_packages()

from .errors import InputError, VIPMTError  # noqa: E402
from .predictor import Predictor  # noqa: E402
from .session import PendingFramesWarning  # noqa: E402

__all__ = ["Predictor", "VIPMTError", "InputError", "PendingFramesWarning"]
