"""Small synthetic datasets in the real on-disk formats, for tests, the demo and trying things.

* :func:`write_synthetic_youtube_vis` writes a YouTube-VIS 2019 tree
  (``train/train.json`` + ``train/JPEGImages/<video>/<frame>.jpg``) with 40 categories;
* :func:`write_synthetic_vspw` writes a VSPW 480p tree (``data/<video>/origin/*.jpg``,
  ``data/<video>/mask/*.png`` holding class ids, ``train.txt``/``val.txt``, the label file) and,
  by default, the MiniVSPW fold lists under ``lists/nminivspw_pascal``.

The looks and motion of the objects are in ``scene``, the safe staged writing in ``tree``.
Command line::

    python -m synthetic youtube_vis --root data/synthetic_ytvis --seed 0
    python -m synthetic vspw --root data/synthetic_vspw --seed 0

A layer above ``dataset`` (it writes what the dataset classes read); nothing below imports it.
"""

from .vspw import write_synthetic_vspw
from .youtube_vis import write_synthetic_youtube_vis

__all__ = ["write_synthetic_youtube_vis", "write_synthetic_vspw"]
