"""How a run ends when something goes wrong: one line on stderr (and in train.log once it is
open), a non-zero exit status, never a traceback for a failure a person can act on.

- UserError: a mistake the user can fix (bad flag, missing file, bad label): exit status 2.
- RunFailed: the run itself cannot go on (non-finite loss, disk full): exit status 1.
- Ctrl-C or SIGTERM (a scheduler's stop): "interrupted", exit status 130. A training run adds
  that --resume continues it from its last finished epoch.
"""
import contextlib
import os
import signal
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


class RunFailed(Exception):
    """The run stopped on a failure that is not a usage mistake; printed as one line, exit status 1."""


INTERRUPTED = 130  # the shell's status for a process stopped by Ctrl-C

_log_file: Path | None = None  # train.log of the run in progress, once it is open


def log_errors_to(path: Path | None) -> None:
    """Also append the error line to this file (train.log) when a run stops."""
    global _log_file
    _log_file = path


def _say(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)
    if _log_file is not None:
        try:
            with open(_log_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the disk may be the very problem; stderr has the line


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted"):
    """Turn UserError (exit 2) and RunFailed (exit 1) into one line on stderr, also written to
    train.log when the run has one; Ctrl-C and SIGTERM into the line `interrupted` (exit 130).
    Under torchrun only rank 0 prints it (all exit alike)."""
    log_errors_to(None)
    previous = (signal.signal(signal.SIGTERM, _sigterm), signal.getsignal(signal.SIGINT)) if _main_thread() else None
    try:
        yield
    except (UserError, RunFailed) as e:
        _say(f"error: {e}")
        raise SystemExit(2 if isinstance(e, UserError) else 1) from None
    except KeyboardInterrupt:
        if _main_thread():  # a second Ctrl-C or SIGTERM must not cut this line short with a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(file=sys.stderr)  # end a progress bar's line
        _say(interrupted)
        raise SystemExit(INTERRUPTED) from None
    finally:
        log_errors_to(None)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
