"""Command-line plumbing shared by the scripts: flags, explicit config values, user errors.

A script parses its arguments, turns them into explicit config values with
:func:`explicit_values`, resolves the config with :func:`resolve_config` and runs its main
through :func:`run`, which turns the errors a user can fix into one ``error: ...`` line and
exit status 2.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type

from config import ConfigError, apply_overrides, get_config, read_config_file, update_config
from utils.checkpoint import CheckpointError
from utils.runtime import UserError, run_cli

__all__ = ["script_parser", "add_common_arguments", "explicit_values", "resolve_config", "user_error_types",
           "run"]

# command-line flag (argparse attribute) -> the config key it sets
FLAG_KEYS = {"group": "group", "dataset": "dataset", "device": "device", "backbone_weights": "backbone_weights",
             "output_dir": "output_dir", "run_name": "run_name", "seed": "seed"}


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of a script's docstring ``doc``."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train.py and test.py (each sets one config key)."""
    parser.add_argument("--group", type=int, help="fold 1..4 (config: group)")
    parser.add_argument("--dataset", choices=("youtube_vis", "minivspw"), help="config: dataset")
    parser.add_argument("--data-root", help="root of the dataset (config: youtube_vis_root / minivspw_root)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (config: device; auto = cuda if available)")
    parser.add_argument("--backbone-weights",
                        help="resnet50_v2.pth path, or 'none' for a random backbone (config: backbone_weights)")
    parser.add_argument("--output-dir", help="where run directories are created (config: output_dir)")
    parser.add_argument("--run-name", help="run directory name (config: run_name; default <dataset>_group<G>)")
    parser.add_argument("--seed", type=int, help="config: seed")
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON file of config values (applied before overrides)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. lr=1e-4 image_size=240,424 (see config/config.py)")


def explicit_values(args: argparse.Namespace) -> Dict[str, Any]:
    """Config values given on the command line (flags, --config file, key=value), checked strictly."""
    values: Dict[str, Any] = {}
    if args.config:
        values.update(read_config_file(args.config))
    for attr, key in FLAG_KEYS.items():
        if getattr(args, attr, None) is not None:
            values[key] = getattr(args, attr)
    # key=value overrides: parsed and validated against a scratch config
    scratch = update_config(get_config(), values)
    apply_overrides(scratch, args.overrides)
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        values[key] = scratch[key]
    if args.data_root is not None:
        dataset = values.get("dataset", scratch.dataset)
        values["youtube_vis_root" if dataset == "youtube_vis" else "minivspw_root"] = args.data_root
    return values


def resolve_config(base: Mapping[str, Any], values: Mapping[str, Any]):
    """Defaults, then the known keys of ``base`` (e.g. a checkpoint's saved config), then ``values``."""
    defaults = get_config()
    cfg = update_config(defaults, {k: v for k, v in base.items() if k in defaults})
    return update_config(cfg, values)


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """The exceptions that mean bad input (printed as ``error: ...``, exit status 2)."""
    from dataset import DatasetError  # noqa: WPS433 - the data pipeline is a heavy import, kept out of --help
    from models import ModelError  # noqa: WPS433

    return (UserError, ConfigError, CheckpointError, DatasetError, ModelError)


def run(main: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's ``main(argv)`` (``sys.argv[1:]`` when None) and return its exit status."""
    return run_cli(main, argv, user_error_types())
