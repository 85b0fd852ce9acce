"""What a run reads, recorded so that a resume or a skip never mixes two datasets.

A fingerprint is {input name: {"root": folder, "files": {relative name: line}}}, where a line is
"N bytes, sha256 …" for a file that is hashed (text files, configs, vocabularies: anything up
to HASH_LIMIT) or "N bytes, modified <ns>" for one that is not (audio clips, model weights).
config.json and every checkpoint keep the fingerprint of the run's inputs; `--resume` refuses a
checkpoint whose inputs changed, and a finished run is not skipped when its inputs changed,
either way naming the file. (A copy that does not keep modification times, `cp` without `-p`,
counts as a change of an audio or weights file.)
"""
from pathlib import Path

from common.errors import UserError
from common.files import sha256

HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed; larger ones (weights) are compared by size and time


def file_line(path: Path, hashed: bool = True) -> str:
    st = path.stat()
    if hashed and st.st_size <= HASH_LIMIT:
        return f"{st.st_size} bytes, sha256 {sha256(path)}"
    return f"{st.st_size} bytes, modified {st.st_mtime_ns}"


def files_record(root: Path, names, hashed: bool = True) -> dict:
    """The fingerprint of the given files under root (names relative to it); missing ones say so."""
    root = Path(root)
    files = {}
    for name in sorted(names):
        path = root / name
        files[str(name)] = file_line(path, hashed) if path.is_file() else "missing"
    return {"root": str(root.resolve()), "files": files}


def model_record(name: str) -> dict:
    """A model given as a folder: every file in it (weights by size and time). A hub id: its name."""
    folder = Path(name)
    if not folder.is_dir():
        return {"hub": name}
    return files_record(folder, [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")])


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, one phrase per file ("X changed", "X is new", ...).
    An input whose whole folder is gone now cannot be compared and is not counted."""
    out = []
    for key, was in old.items():
        now = new.get(key)
        if now is None or "files" not in was or "files" not in (now or {}):
            if was != now and now is not None:
                out.append(f"{key}: {was.get('hub', was.get('root'))} is now {now.get('hub', now.get('root'))}")
            continue
        if not Path(now["root"]).exists():
            continue
        root = Path(now["root"])
        for name in sorted(set(was["files"]) | set(now["files"])):
            a, b = was["files"].get(name), now["files"].get(name)
            if a == b:
                continue
            path = root / name
            if a is None:
                out.append(f"{path} is new")
            elif b is None or b == "missing":
                out.append(f"{path} is gone")
            else:
                out.append(f"{path} changed ({a} then, {b} now)")
    return out


def refuse_changed(old: dict | None, new: dict, what: str, remedy: str) -> None:
    """A UserError naming the changed inputs (at most five) when `old` and `new` differ."""
    if not old:
        return
    diff = changes(old, new)
    if diff:
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise UserError(f"{what} read other inputs than there are now: {'; '.join(diff[:5])}{more}. {remedy}")
