"""How a run ends when something goes wrong: one line on stderr (and in train.log once it is
open), a non-zero exit status, never a traceback for a failure a person can act on.

- UserError: a mistake the user can fix (bad flag, missing file, bad label): exit status 2.
- RunFailed: the run itself cannot go on (non-finite loss, disk full): exit status 1.
"""
import contextlib
import os
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


class RunFailed(Exception):
    """The run stopped on a failure that is not a usage mistake; printed as one line, exit status 1."""


_log_file: Path | None = None  # train.log of the run in progress, once it is open


def log_errors_to(path: Path | None) -> None:
    """Also append the error line to this file (train.log) when a run stops."""
    global _log_file
    _log_file = path


@contextlib.contextmanager
def user_errors():
    """Turn UserError (exit 2) and RunFailed (exit 1) into one line on stderr, also written to
    train.log when the run has one. Under torchrun only rank 0 prints it (all exit alike)."""
    log_errors_to(None)
    try:
        yield
    except (UserError, RunFailed) as e:
        line = f"error: {e}"
        if os.environ.get("RANK", "0") == "0":
            print(line, file=sys.stderr, flush=True)
        if _log_file is not None:
            try:
                with open(_log_file, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError:
                pass  # the disk may be the very problem; stderr has the line
        raise SystemExit(2 if isinstance(e, UserError) else 1) from None
    finally:
        log_errors_to(None)
