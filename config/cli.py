"""Every config key as a command-line option, with the authors' names as aliases.

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_config_arguments(parser)            # --lr 1e-4, --image-size 240 424, --max_epoch 3, --config, key=value
    args = parser.parse_args(argv)
    values = explicit_values(args)          # {key: typed value} of what the command line gave

Each key ``some_key`` of :data:`config.DEFAULTS` gets ``--some-key`` and ``--some_key``, parsed
with the default's type: lists as ``--image-size 240 424`` or ``--image-size 240,424``, bools as
``true``/``false`` (also yes/no, on/off, 1/0). The authors' names (:mod:`config.aliases`) are
further spellings of the same options; names with no counterpart here fail with an explanation.
``--data-root DIR`` sets the root of the configured dataset. A key given twice with different
values (an alias and the key, two aliases, an option and a ``key=value`` override, two
``key=value`` overrides) is a ConfigError naming both, never a silent choice; a value given in
``--config FILE`` and on the command line takes the command line's, with a log line.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .aliases import AUTHOR_ALIASES, NO_EQUIVALENT, Alias
from .config import (DATASET_NAMES, DATASET_ROOT_KEYS, DEFAULTS, ConfigError, key_help, parse_assignment,
                     parse_override, read_config_file)

__all__ = ["add_config_arguments", "add_config_option", "config_values_from_args", "explicit_values", "alias_table_markdown",
           "option_names", "KEY_HELP"]

logger = logging.getLogger("config")

GIVEN_ATTR = "config_options_given"        # namespace attribute: [(option string, _Spec, text)]
DATA_ROOT_OPTION = "--data-root"
BACKBONE_FILE = "resnet50_v2.pth"          # the file inside the authors' initmodel_path folder
DATASET_FOLDERS = {"youtube_vis_root": "Youtube-VOS", "minivspw_root": "VSPW_480p"}   # inside data_path

KEY_HELP = key_help()                      # {key: --help text}: the comments of config/config.py's DEFAULTS


# ---- value conversions of the authors' names (config.aliases, field ``convert``) ----------------
def _same(key: str, text: str, dataset: str) -> Dict[str, Any]:
    return {key: parse_override(key, text, DEFAULTS[key])}


def _dataset_parent(key: Optional[str], text: str, dataset: str) -> Dict[str, Any]:
    return {root_key: os.path.join(text, folder) for root_key, folder in DATASET_FOLDERS.items()}


def _dataset_root(key: Optional[str], text: str, dataset: str) -> Dict[str, Any]:
    return {DATASET_ROOT_KEYS[dataset]: text}


def _weights_folder(key: str, text: str, dataset: str) -> Dict[str, Any]:
    if text.endswith(("/", os.sep)) or os.path.isdir(text):
        return {key: os.path.join(text, BACKBONE_FILE)}
    return {key: text}


def _fold_from_zero(key: str, text: str, dataset: str) -> Dict[str, Any]:
    return {key: parse_override(key, text, DEFAULTS[key]) + 1}


CONVERSIONS: Dict[str, Callable[[Optional[str], str, str], Dict[str, Any]]] = {
    "": _same, "dataset_parent": _dataset_parent, "dataset_root": _dataset_root,
    "weights_folder": _weights_folder, "fold_from_zero": _fold_from_zero,
}
# Conversions whose result depends on the dataset (applied once the dataset is known).
DATASET_DEPENDENT = {"dataset_root"}


class _Spec:
    """What one option sets: ``key`` through conversion ``convert``."""

    def __init__(self, key: Optional[str], convert: str = ""):
        self.key, self.convert = key, convert

    def values(self, text: str, dataset: str) -> Dict[str, Any]:
        return CONVERSIONS[self.convert](self.key, text, dataset)


class _ConfigOption(argparse.Action):
    """Records (option string, spec, text); parsing waits for :func:`config_values_from_args`."""

    def __init__(self, option_strings, dest, spec: _Spec, **kwargs):
        self.spec = spec
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        text = ",".join(values) if isinstance(values, list) else values
        given = getattr(namespace, GIVEN_ATTR, None)
        if given is None:
            given = []
            setattr(namespace, GIVEN_ATTR, given)
        given.append((option_string, self.spec, text))
        if self.dest != argparse.SUPPRESS:       # a script's own spelling keeps its attribute (typed)
            setattr(namespace, self.dest, parse_override(self.spec.key, text, DEFAULTS[self.spec.key]))


class _NoEquivalent(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        raise ConfigError(f"{option_string} (the authors' option) has no equivalent here: "
                          f"{NO_EQUIVALENT[option_string[2:]]}")


def option_names(key: str) -> List[str]:
    """``--some-key`` and ``--some_key`` (one name when the key has no underscore)."""
    hyphen = "--" + key.replace("_", "-")
    return [hyphen] if "_" not in key else [hyphen, "--" + key]


def _aliases_by_key() -> Tuple[Dict[str, List[Alias]], List[Alias]]:
    """Single-key aliases grouped by key (same-name entries dropped), and the multi-key ones."""
    by_key: Dict[str, List[Alias]] = {}
    other: List[Alias] = []
    for alias in AUTHOR_ALIASES:
        if alias.key is None or alias.convert in DATASET_DEPENDENT:
            other.append(alias)
        elif "--" + alias.name not in option_names(alias.key):
            by_key.setdefault(alias.key, []).append(alias)
    return by_key, other


def _show_default(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if value == "" else str(value)


def _plain(markdown: str) -> str:
    """Table text for --help: no backticks; % escaped for argparse."""
    return markdown.replace("`", "").replace("%", "%%")


def add_config_option(parser: argparse.ArgumentParser, name: str, key: str, help: str) -> None:
    """A script's own spelling ``name`` of config key ``key`` (e.g. test.py's ``--runs`` of test_runs):
    read with the other config options, so a different value given for the key is a ConfigError;
    ``args.<name>`` holds its typed value (None when not given)."""
    default = DEFAULTS[key]
    parser.add_argument(name, action=_ConfigOption, spec=_Spec(key), help=help,
                        metavar="BOOL" if isinstance(default, bool) else type(default).__name__.upper())


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = (),
                         config_file: bool = True, overrides: bool = True, aliases: bool = True,
                         data_root: bool = True) -> None:
    """Add one option per config key (minus ``exclude``), the authors' aliases, ``--data-root``,
    and (by default) ``--config FILE`` and the positional ``key=value`` overrides.

    Read the result with :func:`explicit_values` (all of it) or :func:`config_values_from_args`
    (the options only).
    """
    excluded = set(exclude)
    unknown = sorted(excluded - set(DEFAULTS))
    if unknown:
        raise ValueError(f"add_config_arguments: exclude names unknown keys {unknown}")
    parser.set_defaults(**{GIVEN_ATTR: None})
    by_key, other = _aliases_by_key() if aliases else ({}, [])
    group = parser.add_argument_group(
        "config values", "each key of config/config.py (the default shown); the authors' option names "
                         "are accepted too (docs/training.md: Authors' option names)")
    for key, default in DEFAULTS.items():
        if key in excluded:
            continue
        names = option_names(key) + ["--" + a.name for a in by_key.get(key, []) if not a.convert]
        kwargs: Dict[str, Any] = {"spec": _Spec(key), "dest": argparse.SUPPRESS}
        if isinstance(default, (list, tuple)):
            kwargs.update(nargs="+", metavar="V")
            shape = f"{len(default)} values, as {_show_default(default)} or {','.join(str(v) for v in default)}; "
        else:
            kwargs.update(metavar="BOOL" if isinstance(default, bool) else type(default).__name__.upper())
            shape = ""
        if key == "dataset":
            kwargs.update(choices=DATASET_NAMES, metavar=None)
        help_text = f"{KEY_HELP.get(key, key)} ({shape}default: {_show_default(default)})"
        group.add_argument(*names, action=_ConfigOption, help=help_text.replace("%", "%%"), **kwargs)
        for alias in by_key.get(key, []):
            if alias.convert:                # its own option: the value is converted first
                kwargs.update(spec=_Spec(key, alias.convert))
                group.add_argument("--" + alias.name, action=_ConfigOption, **kwargs,
                                   help=f"the authors' {alias.name}: {_plain(alias.meaning)}")
    if data_root:
        group.add_argument(DATA_ROOT_OPTION, *["--" + a.name for a in other if a.convert == "dataset_root"],
                           action=_ConfigOption, spec=_Spec(None, "dataset_root"), dest=argparse.SUPPRESS,
                           metavar="DIR", help="root of the configured dataset (sets youtube_vis_root or "
                                               "minivspw_root)")
    for alias in other:
        if alias.convert != "dataset_root":
            group.add_argument("--" + alias.name, action=_ConfigOption, spec=_Spec(alias.key, alias.convert),
                               dest=argparse.SUPPRESS, metavar="DIR",
                               help=f"the authors' {alias.name}: {_plain(alias.meaning)}")
    if aliases:
        for name in NO_EQUIVALENT:
            group.add_argument("--" + name, action=_NoEquivalent, nargs="?", dest=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
    if config_file:
        parser.add_argument("--config", metavar="FILE",
                            help="YAML/JSON file of config values (the command line overrides it)")
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="config overrides, e.g. lr=1e-4 image_size=240,424 (see config/config.py)")


def _collect(items: Sequence[Tuple[str, _Spec, str]], dataset: Optional[str]) -> Dict[str, List[Tuple[str, Any]]]:
    """{key: [(where, value)]}; dataset-dependent options use the dataset given, else ``dataset``."""
    by_key: Dict[str, List[Tuple[str, Any]]] = {}
    later = []
    for option, spec, text in items:
        if spec.convert in DATASET_DEPENDENT:
            later.append((option, spec, text))
            continue
        _check_list_tokens(option, spec, text)
        for key, value in spec.values(text, "").items():
            by_key.setdefault(key, []).append((_where(option, spec, text, key, value), value))
    chosen = _single(by_key, "dataset")
    resolved_dataset = chosen if chosen is not None else (dataset or DEFAULTS["dataset"])
    for option, spec, text in later:
        for key, value in spec.values(text, resolved_dataset).items():
            by_key.setdefault(key, []).append((_where(option, spec, text, key, value), value))
    return by_key


def _where(option: str, spec: _Spec, text: str, key: str, value: Any) -> str:
    """How the user wrote it, and what it means when an alias converts the value."""
    written = f"{option} {text.replace(',', ' ')}"
    return f"{written} (= {key}={_show_default(value).replace(' ', ',')})" if spec.convert else written


def _check_list_tokens(option: str, spec: _Spec, text: str) -> None:
    """``--image-size 240 424 lr=1e-4``: argparse hands the override to the list option."""
    if "=" in text and spec.key is not None and isinstance(DEFAULTS[spec.key], (list, tuple)):
        raise ConfigError(f"{option} {text.replace(',', ' ')}: a key=value override was read as a value of "
                          f"{option}; put overrides before the options, or write {option} "
                          f"{','.join(str(v) for v in DEFAULTS[spec.key])} (one word)")


def _single(by_key: Mapping[str, List[Tuple[str, Any]]], key: str) -> Any:
    """The one value of ``key``, None when absent; ConfigError when given with different values."""
    entries = by_key.get(key)
    if not entries:
        return None
    first_where, first = entries[0]
    for where, value in entries[1:]:
        if value != first:
            raise ConfigError(f"conflicting values for config key {key!r}: {first_where} and {where}; "
                              f"give one value (the authors' option names are aliases of our keys)")
    return first


def config_values_from_args(args: argparse.Namespace, dataset: Optional[str] = None) -> Dict[str, Any]:
    """``{key: typed value}`` of the config options given on the command line (no defaults).

    ``--data-root`` / ``--data_root`` go to the root key of the dataset that the options give,
    else of ``dataset``, else of the default dataset. Conflicting values raise ConfigError.
    """
    items = getattr(args, GIVEN_ATTR, None) or []
    by_key = _collect(items, dataset)
    return {key: _single(by_key, key) for key in by_key}


def explicit_values(args: argparse.Namespace) -> Dict[str, Any]:
    """Config values given on the command line: ``--config FILE``, then the options and the
    ``key=value`` overrides over it. A key given twice on the command line (options, overrides, or
    both) must have one value (ConfigError naming both otherwise); a command-line value that replaces
    the config file's is logged."""
    values: Dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        values.update(read_config_file(config_path))
    by_key: Dict[str, List[Tuple[str, Any]]] = {}
    for item in getattr(args, "overrides", None) or []:
        key, value = parse_assignment(item)
        by_key.setdefault(key, []).append((item, value))
    override_dataset = _single(by_key, "dataset")
    dataset = override_dataset or values.get("dataset")
    for key, entries in _collect(getattr(args, GIVEN_ATTR, None) or [], dataset).items():
        by_key.setdefault(key, []).extend(entries)
    given = {key: _single(by_key, key) for key in by_key}
    for key, value in given.items():
        if key in values and values[key] != value:
            logger.warning("%s=%s from the config file %s is replaced by the command line's %s", key,
                           _show_default(values[key]).replace(" ", ","), config_path,
                           _show_default(value).replace(" ", ","))
    values.update(given)
    return values


def alias_table_markdown() -> str:
    """The authors' names and what they set here, as a markdown table (docs/training.md)."""
    lines = ["| authors' name | here | meaning | used in |", "|---|---|---|---|"]
    for alias in AUTHOR_ALIASES:
        if alias.key is None or alias.convert in DATASET_DEPENDENT:
            target = ("`--data-root`" if alias.convert == "dataset_root"
                      else ", ".join(f"`{k}`" for k in DATASET_FOLDERS))
        else:
            target = f"`{option_names(alias.key)[0]}` (`{alias.key}`)"
        lines.append(f"| `--{alias.name}` | {target} | {alias.meaning} | {alias.source} |")
    for name, why in NO_EQUIVALENT.items():
        source, _, explanation = why.partition(": ")
        lines.append(f"| `--{name}` | (error) | {explanation} | {source} |")
    return "\n".join(lines) + "\n"
