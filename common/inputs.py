"""What a run reads, recorded so that a resume or a skip never mixes two datasets: a fingerprint is
{input name: {"root": folder, "files": {relative name: "N bytes, sha256 …" or "N bytes, modified <ns>"}}}
(a copy of a large file that does not keep modification times counts as a change)."""
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
    files = {str(name): file_line(root / name, hashed) if (root / name).is_file() else "missing"
             for name in sorted(names)}
    return {"root": str(root.resolve()), "files": files}


def model_record(name: str) -> dict:
    """A model given as a folder: every file in it (weights by size and time). A hub id: its name."""
    folder = Path(name)
    if not folder.is_dir():
        return {"hub": name}
    return files_record(folder, [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")])


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, one phrase per file (an input whose folder is gone: none)."""
    out = []
    for key, was in old.items():
        now = new.get(key)
        if now is None or "files" not in was or "files" not in now:
            if was != now and now is not None:
                out.append(f"{key}: {was.get('hub', was.get('root'))} is now {now.get('hub', now.get('root'))}")
            continue
        root = Path(now["root"])
        if not root.exists():
            continue
        for name in sorted(set(was["files"]) | set(now["files"])):
            a, b = was["files"].get(name), now["files"].get(name)
            if a != b:
                path = root / name
                out.append(f"{path} is new" if a is None else f"{path} is gone" if b in (None, "missing")
                           else f"{path} changed ({a} then, {b} now)")
    return out


def refuse_changed(old: dict | None, new: dict, what: str, remedy: str) -> None:
    """A UserError naming the changed inputs (at most five) when `old` and `new` differ."""
    diff = changes(old, new) if old else []
    if diff:
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise UserError(f"{what} read other inputs than there are now: {'; '.join(diff[:5])}{more}. {remedy}")
