"""Command-line plumbing shared by the scripts: the parser, config options, user errors.

Every config key is an option of train.py and test.py: :func:`config.cli.add_config_arguments`
adds ``--key value`` for each key of ``config/config.py`` (hyphens or underscores), the authors'
option names as aliases (``--batch_size 4``, ``--max_epoch 3``), ``--data-root``, ``--config
FILE`` and positional ``key=value`` overrides; :func:`config.cli.explicit_values` turns what
was given into ``{key: typed value}``. That module is their one home; they are re-exported
here so that a script imports its plumbing from one place. A script then resolves the config
with :func:`resolve_config` and runs its main through :func:`run`, which turns the errors a
user can fix into one ``error: ...`` line and exit status 2, and Ctrl-C into exit status 130.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Type

from config import ConfigError, get_config, update_config
from config.cli import add_config_arguments, add_config_option, explicit_values
from utils.checkpoint import CheckpointError
from utils.fileio import WriteError
from utils.runtime import UserError, run_cli

__all__ = ["script_parser", "add_config_arguments", "add_config_option", "explicit_values", "resolve_config", "user_error_types",
           "run", "HelpFormatter"]

EXAMPLE_COMMANDS = ("python", "torchrun")       # docstring lines starting with these are --help examples


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; adds ``(default: X)`` to a script flag that has a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def _examples(doc: str) -> Optional[str]:
    """The indented command lines of a script's docstring, as the --help epilog."""
    lines = [line for line in doc.splitlines()
             if line.startswith("    ") and line.split() and line.split()[0] in EXAMPLE_COMMANDS]
    return "examples:\n" + "\n".join(lines) if lines else None


class ScriptParser(argparse.ArgumentParser):
    """argparse, except that ``key=value`` overrides split by an option are one ConfigError line.

    argparse reads one run of positional arguments, so in ``epochs=2 --group 1 lr=1e-4`` the
    second run is "unrecognized", reported after the whole usage text.
    """

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        stray = [a for a in extra if "=" in a and not a.startswith("-")]
        if stray and len(stray) == len(extra):
            raise ConfigError(f"{' '.join(stray)}: key=value overrides must stand together, all before or all "
                              f"after the options (an option between them splits them), e.g. "
                              f"{self.prog} --group 1 lr=1e-4 epochs=5")
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        self._refuse_empty_paths(parsed)
        return parsed

    def _refuse_empty_paths(self, parsed: argparse.Namespace) -> None:
        """An empty value of a script's own option (``--checkpoint ""``, ``--output ""``: most often a shell
        variable that is not set) is an error; argparse would pass it on, and ``--checkpoint ""`` would test
        the default checkpoint instead. Config keys (``--run-name ""``: the default name) keep their rules."""
        for action in self._actions:
            if not action.option_strings or not isinstance(action, (argparse._StoreAction, argparse._AppendAction)):
                continue
            value = getattr(parsed, action.dest, None)
            flat = value if isinstance(value, list) else [value]
            flat = [v for item in flat for v in (item if isinstance(item, list) else [item])]
            empty = next((v for v in flat if isinstance(v, str) and not v.strip()), None)
            if empty is not None:
                wanted = "a name" if action.metavar == "NAME" else "a path"       # predict.py --class NAME
                raise ConfigError(f"{action.option_strings[0]} {empty!r}: an empty value (a shell variable that is "
                                  f"not set?); give {wanted}")


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A parser for a script: its description is the first paragraph of the docstring ``doc``, its
    epilog the docstring's example commands; option names must be written out (no abbreviations,
    which would make ``--lr`` and ``--lr-...`` ambiguous as keys are added)."""
    return ScriptParser(description=doc.split("\n\n")[0], epilog=_examples(doc), formatter_class=HelpFormatter,
                        allow_abbrev=False)


def resolve_config(base: Mapping[str, Any], values: Mapping[str, Any]):
    """Defaults, then the known keys of ``base`` (e.g. a checkpoint's saved config), then ``values``."""
    defaults = get_config()
    cfg = update_config(defaults, {k: v for k, v in base.items() if k in defaults})
    return update_config(cfg, values)


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """The exceptions that mean bad input or a full disk (printed as ``error: ...``, exit status 2)."""
    from dataset import DatasetError  # noqa: WPS433 - the data pipeline is a heavy import, kept out of --help
    from models import ModelError  # noqa: WPS433

    return (UserError, ConfigError, CheckpointError, DatasetError, ModelError, WriteError)


def run(main: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's ``main(argv)`` (``sys.argv[1:]`` when None) and return its exit status, through
    the scripts' one error boundary (:func:`utils.runtime.run_cli`) with :func:`user_error_types`:
    bad input and a full disk are one ``error:`` line and status 2; Ctrl-C that reaches here
    (outside the training loop, which handles it itself) is status 130 and one line.
    """
    return run_cli(main, argv, user_error_types())
