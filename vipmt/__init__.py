"""The VIPMT library layer: what the scripts (train.py, test.py, predict.py, demo.py, reproduce.py) share.

    from vipmt import Predictor      # segment any video from a few annotated images

    vipmt.cli         command-line plumbing: the scripts' parser (every config key an option,
                      from config.cli), config resolution, user errors
    vipmt.build       datasets, model, optimizer and run directory from a resolved config
    vipmt.loading     load_trained_model: our checkpoints and the authors' files, one loader
    vipmt.training    the training loop: Trainer (receives model, optimizer, scaler, data, hooks)
                      and TrainerState (where a run stands)
    vipmt.hooks       around the steps: validation, logging, checkpoints (Checkpointer), metrics file
    vipmt.run         a whole train.py run: run directory, resume config, DDP, signals, exit status
    vipmt.evaluation  the test protocol over a split: runs, aggregation, the metrics table;
                      training's validation
    vipmt.reproduce   every fold trained (or continued, or reused) and tested: the paper's table
    vipmt.predictor   Predictor (segment, segment_many, start -> Session: one frame at a time) and
                      the reading of videos and frame folders
    vipmt.inputs      the Predictor's supports: images and masks read and checked (InputError)
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

from .predictor import Predictor  # noqa: E402

__all__ = ["Predictor"]
