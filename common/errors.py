"""How a run ends when something goes wrong (docs/reliability.md): one line on stderr (and in train.log
once open), no traceback; exit status 2 for a UserError, 1 for RunFailed (a non-finite loss, a full
disk), 130 for Ctrl-C, SIGTERM or SIGHUP ("interrupted")."""
import contextlib
import os
import signal
import sys
import threading
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


def _say(*lines: str) -> None:
    """Print `lines` on stderr (rank 0) and append the last to train.log (which a closed terminal cannot refuse)."""
    if os.environ.get("RANK", "0") == "0":
        with contextlib.suppress(OSError):
            print(*lines, sep="\n", file=sys.stderr, flush=True)
    if _log_file is not None:
        with contextlib.suppress(OSError), open(_log_file, "a", encoding="utf-8") as f:  # (the disk may be the problem)
            f.write(lines[-1] + "\n")


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted"):
    """Turn the errors and signals of the module docstring into one line (`interrupted` for a signal)."""
    log_errors_to(None)
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.getsignal(s) for s in stops} if threading.current_thread() is threading.main_thread() else {}
    for s in previous:
        if s != signal.SIGINT:  # (Python turns SIGINT into KeyboardInterrupt itself)
            signal.signal(s, _sigterm)
    try:
        yield
    except (UserError, RunFailed) as e:
        _say(f"error: {e}")
        raise SystemExit(2 if isinstance(e, UserError) else 1) from None
    except KeyboardInterrupt:
        for s in previous:  # a second signal must not cut this line short with a traceback
            signal.signal(s, signal.SIG_IGN)
        _say("", interrupted)  # (the empty line ends a progress bar's)
        raise SystemExit(INTERRUPTED) from None
    finally:
        log_errors_to(None)
        for s, handler in previous.items():
            signal.signal(s, handler)
