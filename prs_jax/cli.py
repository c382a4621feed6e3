"""How every command ends on a user's mistake: one line naming the problem and the fix, exit 2.

`exit_on_user_error(command)` wraps a command's work: a `prs_jax.errors.UserError` is printed as
`command: message` on stderr and the process exits with code 2; any other exception is a bug
and keeps its traceback. `run_absl(main, command)` is absl's `app.run` for the absl commands
(main, evaluate, bench), with the same treatment of flag errors: an unknown flag, a missing
required one, a config file that does not load, and an unknown `--config.FIELD` (with
ml_collections' "Did you mean" suggestion). argparse commands keep argparse's own usage
errors (which also exit 2).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from prs_jax.errors import UserError

EXIT_USER_ERROR = 2


def fail(command: str, message: str) -> NoReturn:
    """Print `command: message` as one line on stderr and exit with code 2."""
    print(f"{command}: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def exit_on_user_error(command: str) -> Iterator[None]:
    """Turn a UserError raised inside into one line and exit code 2; re-raise anything else."""
    try:
        yield
    except UserError as error:
        fail(command, str(error))
    except app.UsageError as error:
        fail(command, str(error))


def unknown_field_message(error: Exception, argv: Sequence[str]) -> str | None:
    """The one-line message of ml_collections' error for an unknown `--config.FIELD`; None when
    `error` is not one. ml_collections raises AttributeError/KeyError whose text is the field
    name in quotes, then its 'Did you mean "x" instead of "y"?' suggestion when it has one."""
    lines = [line.strip(" '\"\\") for line in str(error).replace("\\n", "\n").splitlines()]
    field = lines[0] if lines else ""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if re.fullmatch(r"--\w+(\.\w+)+", name) and field in name.split(".")[1:]:
            suggestion = " ".join(line for line in lines[1:] if line)
            hint = suggestion or "Check the name against the config's fields."
            return f"{arg}: the config has no field {field!r}. {hint}"
    return None


def _config_file_errors() -> None:
    """Raise the error of a config file that did not load. ml_collections keeps it until the
    config is first read; reading it here brings it forward to flag parsing."""
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        try:
            filename = config_flags.get_config_filename(flag)
        except TypeError:
            continue  # not a config flag
        try:
            flag.value.keys()
        except OSError as error:
            cause = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
            raise flags.Error(
                f"--{name}={filename}: the config file does not load ({cause}); give an"
                " existing configs/*.py file"
            ) from None


@contextlib.contextmanager
def _flag_errors(command: str, argv: Sequence[str]) -> Iterator[None]:
    """Flag errors as one line: absl's own, an unknown --config.FIELD, a config file's error."""
    try:
        yield
    except flags.Error as error:
        text = str(error)
        if "Error whilst parsing config file" in text:
            fail(command, _config_file_error(text))
        fail(command, f"{text} (--helpshort lists the flags)")
    except (AttributeError, KeyError) as error:
        message = unknown_field_message(error, argv)
        if message is None:
            raise
        fail(command, message)
    except (TypeError, ValueError) as error:
        if "Error whilst parsing config file" not in str(error):
            raise
        fail(command, _config_file_error(str(error)))


def _config_file_error(text: str) -> str:
    """ml_collections wraps the error of a config file's get_config() with its traceback; the
    last line is the error itself ('...ConfigArgumentError: unknown config argument ...')."""
    last = text.strip().splitlines()[-1]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)


def run_absl(
    main: Callable[[list[str]], Any],
    command: str,
    define_flags: Callable[[], None] | None = None,
) -> None:
    """absl's app.run(main), with flag and user errors as one line and exit code 2.
    `define_flags` runs first, inside the same guard: ml_collections applies a config dict
    flag's `--config.FIELD` overrides when the flag is defined."""

    def guarded_main(argv: list[str]) -> Any:
        with exit_on_user_error(command):
            return main(argv)

    def parse(argv: list[str]) -> list[str]:
        with _flag_errors(command, argv):
            remaining = flags.FLAGS(argv)
            _config_file_errors()
        return remaining

    if define_flags is not None:
        with _flag_errors(command, sys.argv):
            define_flags()
    app.run(guarded_main, flags_parser=parse)
