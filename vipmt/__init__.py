"""The VIPMT library layer: what the scripts (train.py, test.py, predict.py, demo.py) share.

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
    vipmt.predictor   Predictor: streaming segmentation of a video of any length, and its inputs

It sits between the scripts and the packages below it (models, dataset, config, utils), which
never import it.
"""
from .predictor import Predictor

__all__ = ["Predictor"]
