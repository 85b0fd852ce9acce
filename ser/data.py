"""The SER corpus as the loop sees it: the clips found (ShEMO's names, or a manifest) and read,
split under a protocol (ser/splits.py), the augmented copies, every wave normalised once, and
batches padded to whole seconds.

    python -m ser.data --check DIR     # what run_all.sh asks of a ShEMO folder before any training
"""
import itertools
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common.device import pinned
from common.errors import UserError
from common.files import read_table
from common.inputs import files_record
from common.results import write_text_csv
from ser.audio import (MAX_SECONDS, SAMPLE_RATE, augmented_copies, crop_long, normalize, pad_short, read_audio,
                       sample_problem)
from ser.splits import Item, Protocol, item_records

# ShEMO's emotion letters, in the label order used everywhere (model ids, reports).
EMOTIONS = {"A": "anger", "F": "fear", "H": "happiness", "N": "neutral", "S": "sadness", "W": "surprise"}
SHEMO_NAME = re.compile(r"^([FM])(\d+)([A-Z])(\d+)\.wav$", re.IGNORECASE)
SPEAKER_ID = re.compile(r"^([^\W\d_]*)(\d+)$")  # letters (any script), then digits


@dataclass
class Clip:
    path: Path
    label: str  # its label name
    speaker: str | None = None


def speaker_id(name: str) -> str:
    """One spelling per speaker: letters, then a number of at least two digits (F1, F001: F01; 3: 03)."""
    m = SPEAKER_ID.match(name)
    return f"{m.group(1)}{int(m.group(2)):02d}" if m else name


def parse_shemo_name(name: str) -> dict | None:
    """`F01A01.wav` → gender F, speaker F01, label anger; None for a name that does not fit."""
    m = SHEMO_NAME.match(name)
    if not m or m.group(3).upper() not in EMOTIONS:
        return None
    gender, number, letter = m.group(1).upper(), m.group(2), m.group(3).upper()
    return {"gender": gender, "speaker": speaker_id(gender + number), "label": EMOTIONS[letter]}


def first_repeat(keys: list) -> tuple[int, int] | None:
    """(i, j): the first key seen twice, at positions i < j; None when every key is new."""
    seen: dict = {}
    for j, key in enumerate(keys):
        if key in seen:
            return seen[key], j
        seen[key] = j
    return None


def file_key(path: Path):
    """A file however its path is spelled (./a, a, a link): device and inode, else its resolved path."""
    try:
        st = path.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return path.resolve()


def shemo_wavs(folder: Path) -> list[Path]:
    """Every *.wav under folder (any sub-folders), sorted."""
    if not folder.is_dir():
        raise UserError(f"--data-dir {folder}: no such folder (ShEMO: unzip it and point --data-dir at it)")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav")


def scan_shemo(folder: Path) -> tuple[list[Clip], list[str]]:
    """The ShEMO-named clips under folder and the .wav names that do not parse; one clip found twice
    (in two folders, F1A01.wav beside F01A01.wav, through a link) is refused, naming both files."""
    clips, bad, keys = [], [], []
    for path in shemo_wavs(folder):
        info = parse_shemo_name(path.name)
        if info is None:
            bad.append(str(path))
        else:
            clips.append(Clip(path, info["label"], info["speaker"]))
            keys.append((info["speaker"], info["label"], int(SHEMO_NAME.match(path.name)[4])))
    if not clips:
        raise UserError(f"{folder}: no ShEMO-named .wav files (like F01A01.wav) found")
    for why, repeat in (("the same speaker, emotion and number", first_repeat(keys)),
                        ("one file", first_repeat([file_key(c.path) for c in clips]))):
        if repeat:
            a, b = (clips[i].path for i in repeat)
            raise UserError(f"{a} and {b} are the same ShEMO clip ({why}); keep one of them (a clip found twice "
                            "would land in two splits)")
    return clips, bad


def read_manifest(path: Path) -> list[Clip]:
    """CSV `path,label[,speaker]`, paths relative to the CSV's folder; a file listed twice (however
    spelled, under any label) is refused, naming both lines."""
    if not path.is_file():
        raise UserError(f"--manifest {path}: no such file")
    cols, rows = read_table(path)
    if "path" not in cols or "label" not in cols:
        raise UserError(f"{path}: needs columns path,label[,speaker] (found: {', '.join(cols) or 'none'})")
    clips = []
    for line, row in rows:
        name, label, speaker = ((row.get(k) or "").strip() for k in ("path", "label", "speaker"))
        if not name or not label:
            raise UserError(f"{path}, line {line}: empty path or label")
        clips.append(Clip(path.parent / name, label, speaker_id(speaker) or None))
    if not clips:
        raise UserError(f"{path}: no rows")
    if repeat := first_repeat([file_key(c.path) for c in clips]):
        i, j = repeat
        raise UserError(f"{path}, lines {rows[i][0]} and {rows[j][0]} list the same clip ({clips[i].path.resolve()}); "
                        "list each clip once (a clip listed twice would land in two splits)")
    return clips


def find_clips(data_dir: Path | None, manifest: Path | None) -> tuple[list[Clip], list[str]]:
    """The corpus's clips, listed but not read, and the misnamed files (scan_shemo's pair)."""
    return scan_shemo(data_dir) if data_dir is not None else (read_manifest(manifest), [])


def corpus_record(data_dir: Path | None, manifest: Path | None) -> dict:
    """The corpus's fingerprint (common/inputs.py): clips by size and time, the manifest by SHA-256."""
    if data_dir is not None:
        wavs = shemo_wavs(data_dir) if data_dir.is_dir() else []  # (a folder that is gone: common.inputs skips it)
        return {"data": files_record(data_dir, [p.relative_to(data_dir).as_posix() for p in wavs], hashed=False)}
    root = manifest.parent
    clips = [c.path.relative_to(root).as_posix() if c.path.is_relative_to(root) else str(c.path)
             for c in read_manifest(manifest)]
    return {"manifest": files_record(root, [manifest.name]), "data": files_record(root, clips, hashed=False)}


def load_clips(clips: list[Clip], strict: bool, log=print) -> tuple[list[Clip], list[np.ndarray], list[str]]:
    """Read every clip: an unusable file skipped with a warning (an error with strict), short ones padded, long cut."""
    from tqdm import tqdm
    kept, waves, skipped = [], [], []
    for clip in tqdm(clips, desc="reading audio", unit="clip", dynamic_ncols=True):
        try:
            wave = read_audio(clip.path)
        except ValueError as e:
            if strict:
                raise UserError(f"{e} (--strict)") from None
            log(f"warning: skipping {e}")
            skipped.append(str(clip.path))
            continue
        if len(wave) > MAX_SECONDS * SAMPLE_RATE:
            log(f"warning: {clip.path} lasts {len(wave) / SAMPLE_RATE:.1f} s; only its first {MAX_SECONDS:g} s are used")
        kept.append(clip)
        waves.append(pad_short(crop_long(wave)))
    if not kept:
        raise UserError("no readable clips: every file was skipped")
    return kept, waves, skipped


@dataclass
class Corpus:
    """The clips read, and which item goes to which split: everything checked, nothing written."""
    clips: list[Clip]
    raw: list[np.ndarray]  # 16 kHz mono, as read
    label_names: list[str]  # a label's id is its index here
    items: dict[str, list[Item]]
    skipped: list[str]  # unreadable, empty, silent or absurd files
    misnamed: list[str]  # .wav files whose names do not follow ShEMO's

    def split(self, protocol: Protocol, seed: int, limit: int | None) -> "Corpus":
        """The same clips, split under `protocol` (each split's classes checked: Protocol.items)."""
        return replace(self, items=protocol.items([c.label for c in self.clips], [c.speaker for c in self.clips],
                                                  seed, limit))


@dataclass
class Dataset:
    """What the loop needs, built once: normalised waves and label ids per split, and the report's facts."""
    label_names: list[str]
    waves: dict[str, list[torch.Tensor]]
    label_ids: dict[str, torch.Tensor]
    counts: dict  # clips per class: the corpus as read, training before/after balancing, each split
    clip_seconds: list[float]  # every readable clip's length
    skipped_files: list[str]  # unreadable or unusable, then misnamed
    records: dict[str, list[dict]]  # per split, each item as split.csv describes it (ser/splits.py)

    @property
    def split_items(self) -> dict:
        """Items per split, how many of them are augmented copies, and how many speakers they hold."""
        return {k: {"items": len(v), "augmented": sum(bool(r["augmentation"]) for r in self.records[k]),
                    "speakers": len({r["speaker"] for r in self.records[k]} - {""}) or None}
                for k, v in self.waves.items()}


def read_corpus(found: tuple[list[Clip], list[str]], protocol: Protocol, seed: int, limit: int | None, strict: bool,
                log=print) -> Corpus:
    """Read the clips (`found`: find_clips's pair) and split them under `protocol`. Writes nothing."""
    clips, misnamed = found
    for name in misnamed:
        log(f"warning: {name} does not follow ShEMO's naming (like F01A01.wav); left out")
    clips, raw, skipped = load_clips(clips, strict, log)
    label_names = sorted({c.label for c in clips})
    if len(label_names) < 2:
        raise UserError(f"the readable clips hold {len(label_names)} class ({', '.join(label_names)}); at least 2 are "
                        "needed to train a classifier")
    return Corpus(clips, raw, label_names, {}, skipped, misnamed).split(protocol, seed, limit)


def build_dataset(corpus: Corpus, *, cache_dir: Path, do_normalize: bool, split_csv: Path | None,
                  method: str = "librosa", log=print) -> Dataset:
    """Make the augmented copies (cached), write split.csv (unless None), normalise every wave once."""
    clips, raw, names, items = corpus.clips, corpus.raw, corpus.label_names, corpus.items
    planned = list(dict.fromkeys(it for its in items.values() for it in its if it.augmentation is not None))
    made = augmented_copies(raw, [(it.clip, it.augmentation) for it in planned], cache_dir, method, log)
    copy_of = dict(zip(planned, made))
    records = item_records(clips, items)
    if split_csv is not None:
        write_text_csv(split_csv, [{"split": name, **r} for name, rows in records.items() for r in rows],
                       ["split", "label", "speaker", "path", "augmentation", "source_also_in"])
    waves = {k: [normalize(raw[it.clip] if it.augmentation is None else copy_of[it], do_normalize) for it in its]
             for k, its in items.items()}
    label_ids = {k: torch.tensor([names.index(clips[it.clip].label) for it in its], dtype=torch.long)
                 for k, its in items.items()}
    per_class = lambda its: {n: sum(clips[it.clip].label == n for it in its) for n in names}  # noqa: E731
    counts = {"corpus": per_class([Item(i) for i in range(len(clips))]),
              "before": per_class([it for it in items["train"] if it.augmentation is None]),
              "after": per_class(items["train"]), "splits": {k: per_class(v) for k, v in items.items()}}
    return Dataset(names, waves, label_ids, counts, [len(w) / SAMPLE_RATE for w in raw],
                   corpus.skipped + corpus.misnamed, records)


def bucket_length(n: int) -> int:
    """Pad up to whole seconds: a small fixed set of shapes instead of one per clip length."""
    return -(-n // SAMPLE_RATE) * SAMPLE_RATE


def bucket_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Evaluation order: clips sorted by length, batches formed within each whole-second bucket,
    so each clip is padded to its own bucket, exactly as ser.predict pads it alone."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups = [list(g) for _, g in itertools.groupby(order, key=lambda i: bucket_length(lengths[i]))]
    return [g[j:j + size] for g in groups for j in range(0, len(g), size)]


def collate(waves: list[torch.Tensor], idx: list[int], label_ids: torch.Tensor, padding_value: float,
            device: torch.device, *, rows: int | None = None, weight: float = 1.0) -> dict:
    """The clips in idx padded to their bucket, host tensors (pinned for CUDA), `lengths` the real sample
    counts; `rows` fills a short batch with zero-weight copies of its first clip; `weight`: each real clip's."""
    n = len(idx)
    rows = rows or n
    take = list(idx) + [idx[0]] * (rows - n)
    lengths = torch.tensor([len(waves[i]) for i in take])
    x = torch.full((rows, bucket_length(int(lengths.max()))), padding_value)
    for row, i in enumerate(take):
        x[row, :len(waves[i])] = waves[i]
    batch = {"input_values": x, "lengths": lengths, "label_ids": label_ids[take],
             "weights": torch.tensor([weight] * n + [0.0] * (rows - n))}
    return {k: pinned(v, device) for k, v in batch.items()}


def check_shemo(folder: Path) -> dict[str, int]:
    """Usable clips per emotion (those training would keep: sample_problem) in a ShEMO folder; a
    UserError unless two emotions have 3 each. No resampling: under a minute for ShEMO's 3,000 clips."""
    import soundfile as sf
    from tqdm import tqdm
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (ShEMO: unzip it and point --shemo or --data-dir at it)")
    clips, _ = scan_shemo(folder)
    counts: Counter = Counter()
    why: Counter = Counter()  # what is wrong with the clips training would skip
    for clip in tqdm(clips, desc="checking audio", unit="clip", dynamic_ncols=True, leave=False):
        try:
            wave, _ = sf.read(str(clip.path), dtype="float32", always_2d=True)
            problem = sample_problem(wave)
        except Exception:  # soundfile raises several types for corrupt or unknown files
            problem = "cannot be read"
        if problem:
            why[problem.split(" (")[0]] += 1
        else:
            counts[clip.label] += 1
    if sum(v >= 3 for v in counts.values()) < 2:
        unusable = "; ".join(f"{n} {w}" for w, n in why.most_common())
        raise UserError(f"{folder}: {sum(counts.values())} usable ShEMO-named clips "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'})"
                        f"{f'; unusable: {unusable}' if unusable else ''}; at least two emotions with 3 usable clips "
                        "each are needed")
    return dict(sorted(counts.items()))


def main(argv=None):
    import argparse
    from common.errors import user_errors
    p = argparse.ArgumentParser(prog="python -m ser.data", description="Check a ShEMO folder before training.")
    p.add_argument("--check", type=Path, required=True, metavar="DIR", help="ShEMO folder")
    a = p.parse_args(argv)
    with user_errors():
        counts = check_shemo(a.check)
        print(f"{a.check}: {sum(counts.values())} usable clips (" + ", ".join(f"{k} {v}" for k, v in counts.items())
              + ")")


if __name__ == "__main__":
    main()
