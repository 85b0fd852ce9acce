"""Every result file written through `atomic_write` (the old file or the new, never half of one, even
after a power cut); text inputs read as UTF-8 (a byte-order mark accepted; else an error naming the line)."""
import contextlib
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
    """Call write(tmp) to make a file or a folder beside `path`, flush it to disk, then move it into
    place. An existing folder is replaced only with `replace_folder` (a run's own model/, never an
    --output). A failed write (torch and safetensors raise their own errors too) becomes RunFailed."""
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
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise RunFailed(f"cannot write {path}: {write_error(e)}") from None


def write_error(e: BaseException) -> str:
    """A failed write in one line, with a hint where a library hides a full disk (torch's "unexpected pos")."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return first if "No space left" in first else f"{first} (is the disk full?)"


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a written file, or every file in a written folder, and the folder itself."""
    for p in path.rglob("*") if path.is_dir() else [path]:
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    if path.is_dir():
        fsync_folder(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sha256(path: Path) -> str:
    """The file's SHA-256, read in pieces (checkpoints run to gigabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    write_text(path, json.dumps(finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_text(path: Path) -> str:
    """A text file decoded as UTF-8 (a leading byte-order mark dropped); else a UserError naming the line."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                        "UTF-8 and run again") from None


def read_table(path: Path, delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict]]]:
    """A UTF-8 table (csv's standard quoting) as (column names, [(line number, row)])."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        fields = list(reader.fieldnames or [])
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: cannot read this row ({e})") from None
    return fields, rows
