"""The VIPMT library layer: what the scripts (train.py, test.py, predict.py, demo.py) share.

    vipmt.cli         command-line plumbing: the common flags, config resolution, user errors
    vipmt.build       datasets, model and run directory from a resolved config
    vipmt.loading     load_trained_model: our checkpoints and the authors' files, one loader
    vipmt.training    the training loop (Trainer + TrainerState + hooks) and a whole run
    vipmt.evaluation  the test protocol over a split: runs, aggregation, the metrics table

It sits between the scripts and the packages below it (models, dataset, config, utils), which
never import it. Importing ``vipmt`` itself is cheap; each module imports what it needs.
"""
