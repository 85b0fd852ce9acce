"""Reading and writing the files a run keeps.

Every result file is written through `atomic_write`: into a temporary sibling, flushed to disk
(fsync), then renamed over the target and the folder flushed too, so a reader (or a resumed run)
finds the old file or the new one, never half of one, even after a power cut. A write that
fails (disk full, read-only folder) becomes one line naming the path. A folder is replaced only
where the caller says it may be (a run's own model/): an `--output` that names a folder is never
deleted.
Text inputs are read as UTF-8 (a byte-order mark is accepted); another encoding is an error
naming the file and line. Tables (FarsTail, prediction TSVs, manifests) are read with the csv
module's standard quoting and no limit on a field's length.
"""
import csv
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

from common.errors import RunFailed, UserError

csv.field_size_limit(2**31 - 1)  # the default 131,072 characters would stop a long (but valid) field


def atomic_write(path: Path, write: Callable[[Path], None], *, replace_folder: bool = False) -> None:
    """Call write(tmp) to make a file or a folder at a temporary path beside `path`, flush it to
    disk, then move it into place. An existing folder at `path` is replaced only with
    `replace_folder` (a run's own model/); otherwise it is refused. A failed write (OSError, or
    the RuntimeError / SafetensorError that torch and safetensors raise for a full disk) becomes
    RunFailed naming `path`."""
    from safetensors import SafetensorError
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and not replace_folder:
        raise UserError(f"{path} is a folder; refusing to replace it with a file (give a file name)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent runs may share a cache
    try:
        _remove(tmp)
        write(tmp)
        _fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():  # a folder (model/) cannot be renamed over another
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        fsync_folder(path.parent)
    except (OSError, RuntimeError, SafetensorError) as e:
        _remove(tmp, quiet=True)
        raise RunFailed(f"cannot write {path}: {write_error(e)}") from None


def write_error(e: BaseException) -> str:
    """What a failed write says, in one line: the OS reason, or the library's first line plus a
    hint where it hides a full disk (safetensors' IoError, torch's "unexpected pos")."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return first if "No space left" in first else f"{first} (is the disk full?)"


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a written file, or every file in a written folder, and the folder itself."""
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file():
                _fsync_file(p)
        fsync_folder(path)
    elif path.exists():
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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


def read_table(path: Path, delimiter: str = ",", what: str = "") -> tuple[list[str], list[tuple[int, dict]]]:
    """A UTF-8 table read with csv's standard quoting (quoted fields may hold the delimiter,
    quotes and newlines): (column names, [(line number, row)]). A malformed row (a NUL byte, a
    stray quote at the end of the file) is a UserError naming the file and line."""
    reader = csv.DictReader(io.StringIO(read_text(path, what), newline=""), delimiter=delimiter)
    rows = []
    try:
        fields = list(reader.fieldnames or [])
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: cannot read this row ({e})") from None
    return fields, rows
