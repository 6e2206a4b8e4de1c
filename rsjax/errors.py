"""rsjax's typed errors: the faults a user can fix, reported in one line.

Every command-line entry point (``rsjax.main``, ``rsjax.data.build``, ``rsjax.export``,
``rsjax.bench``, ``rsjax.import_weights``) catches :class:`RsjaxError` only and prints
``<prog>: error: <message>`` on stderr with exit status 2. Anything else is a bug and keeps
its traceback. So an ``RsjaxError``'s message must say everything: the config key, file,
split, checkpoint folder or workdir involved, and what to do.

``ConfigError`` and ``DataError`` are also ``ValueError`` (and ``NonFiniteError`` a
``RuntimeError``) so that library callers catching the builtin types keep working.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Sequence

from absl import app, flags

EXIT_CODE = 2  # what every CLI exits with on an RsjaxError (as argparse does on a usage error)


class RsjaxError(Exception):
    """A fault the user can fix; the message says everything (CLIs print it in one line)."""


class ConfigError(RsjaxError, ValueError):
    """A bad, unknown or inconsistent config key or value (the message names ``config.<key>``)."""


class DataError(RsjaxError, ValueError):
    """Bad input data (the message names the dataset, file, split, record or feature)."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset, folder or file that should exist does not (not built, wrong ``--manual_dir``)."""


class CheckpointError(RsjaxError):
    """A checkpoint that cannot be read, or that does not fit this config (names the step folder
    and the differing keys or parameter paths)."""


class WorkdirError(RsjaxError):
    """The workdir cannot be used: locked by another run (names the holder), not writable, a
    file, disk full, or holding a run with another config (:class:`rsjax.workdir.ConfigMismatchError`)."""


class NonFiniteError(RsjaxError, RuntimeError):
    """Too many consecutive train steps with a non-finite loss or gradient."""


def require(ok, key: str, value, msg: str) -> None:
    """THE config check: raises :class:`ConfigError` ``config.<key>=<value!r>: <msg>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{key}={value!r}: {msg}")


def checker(block, where: str = "") -> Callable[..., None]:
    """``need(ok, key, msg)`` for the keys of one config block ``config.<where>``: :func:`require`
    with the value read from ``block`` and the block's path in front of ``key``."""
    prefix = f"{where}." if where else ""
    return lambda ok, key, msg: require(ok, prefix + key, block[key], msg)


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Re-raises ``ValueError`` / ``KeyError`` / ``AttributeError`` raised inside as
    :class:`ConfigError` with the same message (an ``RsjaxError`` passes unchanged).

    For the config-completion and validation code of a job, where these builtin errors mean
    "the config is wrong" (a missing key, a value out of range); never wrap training or I/O in it.
    """
    try:
        yield
    except RsjaxError:
        raise
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(_message(e)) from e


def _message(e: BaseException) -> str:
    # KeyError / AttributeError of ml_collections quote their argument twice ("'foo'").
    msg = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and len(e.args) == 1 else str(e)
    while len(msg) >= 2 and msg[0] == msg[-1] and msg[0] in "'\"":
        msg = msg[1:-1]
    return msg or type(e).__name__


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``str(e)``, at most ``limit`` characters ('' for an empty message)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


def short(e: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an error (a wrapped library error in one line)."""
    line = first_line(e, limit)
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def one_line(prog: str, e: BaseException) -> str:
    """``"<prog>: error: <message>"`` with the message's lines joined by "; " (one line)."""
    text = "; ".join(line.strip() for line in _message(e).splitlines() if line.strip())
    return f"{prog}: error: {text}"


def exit_with(prog: str, e: BaseException) -> None:
    """Prints :func:`one_line` on stderr and exits with :data:`EXIT_CODE`."""
    print(one_line(prog, e), file=sys.stderr, flush=True)
    sys.exit(EXIT_CODE)


def _flag_message(e: BaseException) -> str:
    """absl's message for a bad flag value; when it wraps a traceback of the config file
    (ml_collections: "Error whilst parsing config file: Traceback ..."), only its last line."""
    msg = str(e)
    if "Traceback (most recent call last)" in msg:
        lines = [line.strip() for line in msg.splitlines() if line.strip()]
        flag = msg.split(":", 1)[0] if msg.startswith("flag --") else ""
        msg = f"{flag}: error in the config file: {lines[-1]}" if flag else f"error in the config file: {lines[-1]}"
    return msg


def _offending_override(argv: Sequence[str], key: str) -> str | None:
    """The ``--config.a.b=v`` argument whose path contains ``key`` (for the error message)."""
    for arg in argv[1:]:
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            path = arg[2:].split("=", 1)[0].split(".")[1:]
            if key in path:
                return arg
    return None


def parse_flags(prog: str, config_flag=None) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``absl.app.run`` that reports command-line mistakes in one line.

    absl prints "FATAL Flags parsing error" (exit 1) for a bad flag, and ml_collections raises
    during parsing for an unknown config key (``--config.foo=1``: a 50-line ``AttributeError``),
    or defers a config file that cannot be loaded (``--config=configs/nope.py``) until the config
    is first read. This parser parses the flags, then reads ``config_flag`` (the holder returned by
    ``config_flags.DEFINE_config_file``) so that both surface here, and turns them into
    ``<prog>: error: ...`` with exit status 2.
    """

    def parser(argv: list[str]) -> list[str]:
        try:
            with config_errors():
                try:
                    rest = flags.FLAGS(argv)
                except flags.Error as e:
                    raise ConfigError(_flag_message(e)) from e
                except OSError as e:  # an override of a config file that failed to load
                    raise ConfigError(_message(e)) from e
                except (KeyError, AttributeError) as e:  # ml_collections: override of an unknown key
                    key = _message(e).split("\n")[0].strip("'\" ")
                    arg = _offending_override(argv, key)
                    raise ConfigError(
                        f"unknown config key {key!r}"
                        + (f" in {arg}" if arg else "")
                        + "; check the spelling against the config file"
                    ) from e
                # ml_collections defers a config file that failed to load (a placeholder that
                # raises on first use, in the middle of the job): surface it here.
                error = getattr(config_flag.value, "_error", None) if config_flag is not None else None
                if isinstance(error, OSError):
                    last = [line.strip() for line in _message(error).splitlines() if line.strip()][-1]
                    raise ConfigError(f"--{config_flag.name}: cannot load the config file: {last}") from error
                return rest
        except RsjaxError as e:
            exit_with(prog, e)
            raise  # not reached

    return parser


def run_cli(main: Callable, prog: str, config_flag=None) -> None:
    """``absl.app.run(main)`` with :func:`parse_flags` and every :class:`RsjaxError` raised by
    ``main`` printed in one line (exit 2); other exceptions keep their traceback."""

    def wrapped(argv):
        try:
            return main(argv)
        except RsjaxError as e:
            exit_with(prog, e)

    app.run(wrapped, flags_parser=parse_flags(prog, config_flag))
