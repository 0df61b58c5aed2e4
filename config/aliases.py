"""The authors' option and config names, accepted on the command line next to ours.

Data only; :mod:`config.cli` turns each entry into an option and
:func:`config.cli.alias_table_markdown` renders the table for the README.

Sources: the VIPMT authors' ``train.py`` / ``test.py`` argparse options and their
``libs/config/config.py`` (``data_path``, ``initmodel_path``, ``input_size``, ``test_size``,
``SNAPSHOT_DIR``), and the YAML keys of PFENet / IPMT, the few-shot segmentation code VIPMT
builds on (``base_lr``, ``manual_seed``, ``workers``, ``shot``, ``split``, ...).

``convert`` names how a value maps onto ours (see ``config.cli.CONVERSIONS``):

* ``""`` -- the same value, for the key ``key``;
* ``"dataset_parent"`` -- the folder that holds ``Youtube-VOS/`` and ``VSPW_480p/`` (the authors'
  ``data_path``): sets ``youtube_vis_root`` and ``minivspw_root`` to those sub-folders;
* ``"dataset_root"`` -- the root of the configured dataset (like ``--data-root``);
* ``"weights_folder"`` -- a folder (the authors' ``initmodel_path`` is ``pretrain_model/``)
  means ``<folder>/resnet50_v2.pth``; a file path is used as is;
* ``"fold_from_zero"`` -- a 0-based fold index (PFENet's ``split`` 0..3) -> ``group`` 1..4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Alias", "AUTHOR_ALIASES", "NO_EQUIVALENT"]

VIPMT_TRAIN = "VIPMT train.py"
VIPMT_TEST = "VIPMT test.py"
VIPMT_BOTH = "VIPMT train.py, test.py"
VIPMT_CONFIG = "VIPMT config.py"
PFENET = "PFENet / IPMT config"


@dataclass(frozen=True)
class Alias:
    name: str                 # the authors' name, used as --<name>
    key: Optional[str]        # our config key (None when ``convert`` sets several keys)
    source: str               # where the authors use the name
    meaning: str              # what it means, for the README table
    convert: str = ""         # how the value maps onto ours (module docstring)


AUTHOR_ALIASES = (
    Alias("data_path", None, f"{VIPMT_CONFIG}, {VIPMT_BOTH}",
          "folder holding `Youtube-VOS/` and `VSPW_480p/` (authors' default `data/`): sets "
          "`youtube_vis_root` and `minivspw_root` to those sub-folders", "dataset_parent"),
    Alias("data_root", None, PFENET, "root of the configured dataset (= `--data-root`)", "dataset_root"),
    Alias("initmodel_path", "backbone_weights", f"{VIPMT_CONFIG}, {VIPMT_BOTH}",
          "ImageNet backbone: a folder means `<folder>/resnet50_v2.pth` (authors' default "
          "`pretrain_model/`), a file is used as is", "weights_folder"),
    Alias("snapshot_dir", "output_dir", f"{VIPMT_CONFIG} (`SNAPSHOT_DIR`), {VIPMT_BOTH}",
          "where run directories are written"),
    Alias("save_path", "output_dir", PFENET, "where run directories are written"),
    Alias("input_size", "image_size", VIPMT_CONFIG, "(H, W) network input size"),
    Alias("test_size", "image_size", VIPMT_CONFIG, "(H, W) test input size (one size serves both here)"),
    Alias("max_epoch", "epochs", VIPMT_TRAIN, "training epochs"),
    Alias("save_epoch", "save_every", VIPMT_TRAIN, "periodic checkpoint every N epochs"),
    Alias("save_freq", "save_every", PFENET, "periodic checkpoint every N epochs"),
    Alias("sample_per_class", "episodes_per_class", VIPMT_TRAIN, "training episodes per class per epoch"),
    Alias("vsample_per_class", "val_episodes_per_class", VIPMT_TRAIN, "validation episodes per class"),
    Alias("query_frame", "clip_length", VIPMT_BOTH, "frames per clip (the authors' 5)"),
    Alias("support_frame", "support_shots", VIPMT_BOTH, "annotated support images per episode"),
    Alias("shot", "support_shots", PFENET, "annotated support images per episode"),
    Alias("split", "group", PFENET, "0-based fold index 0..3 = `group` 1..4", "fold_from_zero"),
    Alias("train_seed", "seed", VIPMT_TRAIN, "random seed"),
    Alias("test_seed", "seed", VIPMT_TEST, "random seed"),
    Alias("manual_seed", "seed", PFENET, "random seed"),
    Alias("base_lr", "lr", PFENET, "Adam learning rate"),
    Alias("workers", "num_workers", PFENET, "DataLoader worker processes"),
    Alias("batch_size_val", "val_batch_size", PFENET, "validation batch size"),
    # The same name as ours, listed for the README (no extra option is added for these).
    Alias("group", "group", VIPMT_BOTH, "fold 1..4"),
    Alias("batch_size", "batch_size", f"{VIPMT_BOTH}, {PFENET}", "episodes per batch (per process)"),
    Alias("num_workers", "num_workers", VIPMT_BOTH, "DataLoader worker processes"),
    Alias("lr", "lr", "VIPMT optimizer (fixed 5e-4 there)", "Adam learning rate"),
    Alias("weight_decay", "weight_decay", f"VIPMT optimizer (fixed 5e-4 there), {PFENET}", "Adam weight decay"),
    Alias("epochs", "epochs", PFENET, "training epochs"),
)

# Authors' names that have no counterpart here: giving one is an error that says why and what to use.
NO_EQUIVALENT = {
    "test_num": f"{VIPMT_TEST}: it only names the authors' log file (test_best_N.txt) and changes "
                f"nothing computed; to repeat the test with seeds seed..seed+N-1 use --test-runs N",
    "train_clip": f"{VIPMT_TRAIN}: clips per training episode (3); here the query length is "
                  f"--query-frames = clips x --clip-length (15 = 3 x 5)",
    "restore_epoch": f"{VIPMT_BOTH}: the epoch file to restore; here train.py --resume continues "
                     f"from last.pth and test.py --checkpoint PATH tests any checkpoint",
    "valid_seed": f"{VIPMT_TRAIN}: validation draws here derive from --seed (a fixed stream per run)",
    "train_h": f"{PFENET}: use --image-size H W",
    "train_w": f"{PFENET}: use --image-size H W",
    "trainid": f"{VIPMT_BOTH}: a number in the authors' run folder name; use --run-name NAME",
    "novalid": f"{VIPMT_TRAIN}: validation cannot be switched off here; --validate-every N runs it every N epochs",
    "max_iters": f"{VIPMT_TRAIN}: computed by the authors' script from the epochs; use --epochs N",
}
