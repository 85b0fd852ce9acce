"""Reading and writing the files a run keeps.

Every result file is written through `atomic_write`: into a temporary sibling, then renamed over
the target, so a reader (or a resumed run) finds the old file or the new one, never half of
one. A write that fails (disk full, read-only folder) becomes one line naming the path.
Text inputs are read as UTF-8 (a byte-order mark is accepted); another encoding is an error
naming the file and line.
"""
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

from common.errors import RunFailed, UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) to make a file or a folder at a temporary path beside `path`, then move it
    into place. An OSError becomes RunFailed naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent runs may share a cache
    try:
        _remove(tmp)
        write(tmp)
        if path.is_dir() and not path.is_symlink():  # a folder (model/) cannot be renamed over another
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as e:
        _remove(tmp, quiet=True)
        raise RunFailed(f"cannot write {path}: {e.strerror or e}") from None


def _remove(path: Path, quiet: bool = False) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        if not quiet:
            raise


def sha256(path: Path) -> str:
    """The file's SHA-256, read in 16 MiB pieces (checkpoints run to gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def finite(obj):
    """obj with every NaN or infinite float replaced by None, so the JSON is valid (no bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    text = json.dumps(finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_text(path: Path, what: str = "") -> str:
    """A text file decoded as UTF-8 (a leading byte-order mark dropped). Any other encoding is a
    UserError naming the file and the line of the first bad byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{what + ' ' if what else ''}{path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                        "UTF-8 and run again") from None
