"""ShEMO (or any manifest-listed corpus): find the clips, read them as 16 kHz mono, split them
(stratified or by speaker), then balance the training split only with cached augmented copies.

Splitting comes first: augmenting before the split (as the study did) lets copies of a test clip
into training and inflates test accuracy.
"""
import csv
import hashlib
import io
import json
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.device import pinned
from common.errors import UserError
from common.files import atomic_write, read_text

SAMPLE_RATE = 16000
MIN_SECONDS = 0.5  # shorter clips are zero-padded to this, so HuBERT's SpecAugment time masks fit
SILENCE = 1e-4  # a clip whose every sample is below this in magnitude is treated as silent
# ShEMO's emotion letters, in the label order used everywhere (model ids, reports).
EMOTIONS = {"A": "anger", "F": "fear", "H": "happiness", "N": "neutral", "S": "sadness", "W": "surprise"}
SHEMO_NAME = re.compile(r"^([FM])(\d+)([A-Z])(\d+)\.wav$", re.IGNORECASE)
# Balancing augmentation: every new copy gets both, with parameters drawn from these ranges.
PITCH_SEMITONES = (-2.0, 2.0)
STRETCH_RATE = (0.85, 1.15)


@dataclass
class Clip:
    path: Path
    label: str
    speaker: str | None = None


def parse_shemo_name(name: str) -> dict | None:
    """`F01A01.wav` → gender F, speaker F01, label anger; None for a name that does not fit."""
    m = SHEMO_NAME.match(name)
    if not m or m.group(3).upper() not in EMOTIONS:
        return None
    gender, number, letter = m.group(1).upper(), m.group(2), m.group(3).upper()
    return {"gender": gender, "speaker": gender + number, "label": EMOTIONS[letter]}


def scan_shemo(folder: Path) -> tuple[list[Clip], list[str]]:
    """Every *.wav under folder (any sub-folders); returns the clips and the names that do not parse."""
    if not folder.is_dir():
        raise UserError(f"--data-dir {folder}: no such folder (ShEMO: unzip it and point --data-dir at it)")
    clips, bad = [], []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() != ".wav":
            continue
        info = parse_shemo_name(path.name)
        if info is None:
            bad.append(str(path))
        else:
            clips.append(Clip(path, info["label"], info["speaker"]))
    if not clips:
        raise UserError(f"{folder}: no ShEMO-named .wav files (like F01A01.wav) found")
    return clips, bad


def read_manifest(path: Path) -> list[Clip]:
    """CSV `path,label[,speaker]`, paths relative to the CSV's folder."""
    if not path.is_file():
        raise UserError(f"--manifest {path}: no such file")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    cols = reader.fieldnames or []
    if "path" not in cols or "label" not in cols:
        raise UserError(f"{path}: needs columns path,label[,speaker] (found: {', '.join(cols) or 'none'})")
    clips = []
    for row in reader:
        if not (row["path"] or "").strip() or not (row["label"] or "").strip():
            raise UserError(f"{path}, line {reader.line_num}: empty path or label")
        clips.append(Clip(path.parent / row["path"].strip(), row["label"].strip(),
                          (row.get("speaker") or "").strip() or None))
    if not clips:
        raise UserError(f"{path}: no rows")
    return clips


def read_audio(path: Path) -> np.ndarray:
    """A file as 16 kHz mono float32: channels averaged, resampled with torchaudio. Raises
    ValueError (unreadable, empty, or holding NaN or infinite samples) so the caller decides
    between skipping and stopping."""
    import soundfile as sf
    from torchaudio.functional import resample
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing, corrupt or unknown files
        raise ValueError(f"cannot read {path}: {e}") from None
    if wave.size == 0:
        raise ValueError(f"{path} is empty")
    if not np.isfinite(wave).all():
        raise ValueError(f"{path} holds NaN or infinite samples")
    wave = wave.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def pad_short(wave: np.ndarray) -> np.ndarray:
    """Zero-pad a clip shorter than MIN_SECONDS up to it (training and prediction alike)."""
    short = int(MIN_SECONDS * SAMPLE_RATE) - len(wave)
    return np.pad(wave, (0, short)) if short > 0 else wave


def load_clips(clips: list[Clip], strict: bool, log=print) -> tuple[list[Clip], list[np.ndarray], list[str]]:
    """Read every clip; unreadable, empty or silent files are skipped with a warning naming them
    (an error with strict). Clips under MIN_SECONDS are zero-padded to it."""
    from tqdm import tqdm
    kept, waves, skipped = [], [], []
    for clip in tqdm(clips, desc="reading audio", unit="clip", dynamic_ncols=True):
        try:
            wave = read_audio(clip.path)
            if np.abs(wave).max() < SILENCE:
                raise ValueError(f"{clip.path} is silent (every sample below {SILENCE})")
        except ValueError as e:
            if strict:
                raise UserError(f"{e} (--strict)") from None
            log(f"warning: skipping {e}")
            skipped.append(str(clip.path))
            continue
        kept.append(clip)
        waves.append(pad_short(wave))
    if not kept:
        raise UserError("no readable clips: every file was skipped")
    return kept, waves, skipped


# ---------------------------------------------------------------- splits
def split_random(labels: list[str], seed: int) -> dict[str, list[int]]:
    """Stratified 80/10/10: within each class, a seeded shuffle, then 10% test, 10% validation
    (at least one clip each), the rest training."""
    rng = random.Random(seed)
    out = {"train": [], "val": [], "test": []}
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        if len(idx) < 3:
            raise UserError(f"class {label!r} has {len(idx)} clip(s); at least 3 are needed to split 80/10/10")
        rng.shuffle(idx)
        n = max(1, round(0.1 * len(idx)))
        out["test"] += idx[:n]
        out["val"] += idx[n:2 * n]
        out["train"] += idx[2 * n:]
    return {k: sorted(v) for k, v in out.items()}


def split_by_speaker(labels: list[str], speakers: list[str | None], seed: int) -> dict[str, list[int]]:
    """No speaker in two splits. Speakers, largest first (ties in seeded order), each go to the
    split whose per-class targets (80/10/10 of each class) they fill best, so classes are as
    even across splits as the speakers allow."""
    if any(s is None for s in speakers):
        raise UserError("--split speaker needs a speaker for every clip (ShEMO names, or a manifest speaker column)")
    names = sorted(set(speakers))
    if len(names) < 3:
        raise UserError(f"--split speaker needs at least 3 speakers, found {len(names)}")
    classes = sorted(set(labels))
    count = {s: {c: 0 for c in classes} for s in names}
    for y, s in zip(labels, speakers):
        count[s][y] += 1
    total = {c: sum(count[s][c] for s in names) for c in classes}
    frac = {"train": 0.8, "val": 0.1, "test": 0.1}
    have = {k: {c: 0 for c in classes} for k in frac}
    rng = random.Random(seed)
    rng.shuffle(names)
    names.sort(key=lambda s: -sum(count[s].values()))
    assign = {}
    for s in names:
        # an empty split takes the next speaker; otherwise the split with the most unmet need for this speaker's classes
        empty = [k for k in ("test", "val") if not any(have[k].values())]
        best = empty[0] if empty else max(frac, key=lambda k: sum(
            count[s][c] * (frac[k] * total[c] - have[k][c]) / max(total[c], 1) for c in classes))
        assign[s] = best
        for c in classes:
            have[best][c] += count[s][c]
    out = {k: [i for i, s in enumerate(speakers) if assign[s] == k] for k in frac}
    return out


# ---------------------------------------------------------------- balancing
def augment(wave: np.ndarray, semitones: float, rate: float) -> np.ndarray:
    """Pitch shift then time stretch (which changes the length), both always applied."""
    from audiomentations import PitchShift, TimeStretch
    out = PitchShift(min_semitones=semitones, max_semitones=semitones, p=1.0)(wave, SAMPLE_RATE)
    out = TimeStretch(min_rate=rate, max_rate=rate, leave_length_unchanged=False, p=1.0)(out, SAMPLE_RATE)
    return np.ascontiguousarray(out, dtype=np.float32)


def balance_plan(labels: list[str], seed: int) -> list[dict]:
    """The augmented copies that bring every class up to the largest class's count: copies come
    from the class's own clips in turn, each with its own seeded pitch shift and stretch rate."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    target = max(len(v) for v in by_class.values())
    plan = []
    for label in sorted(by_class):
        members = by_class[label]
        for k in range(target - len(members)):
            plan.append({"source": members[k % len(members)], "label": label,
                         "semitones": rng.uniform(*PITCH_SEMITONES), "rate": rng.uniform(*STRETCH_RATE)})
    return plan


def cache_key(wave: np.ndarray, step: dict) -> str:
    """Names an augmented clip by its source audio's content and the augmentation's parameters,
    so a change of data, seed or settings never reuses a stale file."""
    h = hashlib.sha256(wave.tobytes())
    h.update(json.dumps({"semitones": step["semitones"], "rate": step["rate"], "sr": SAMPLE_RATE, "v": 1},
                        sort_keys=True).encode())
    return h.hexdigest()[:32]


def augmented_copies(waves: list[np.ndarray], plan: list[dict], cache_dir: Path) -> list[np.ndarray]:
    """Compute each planned copy once and keep it in cache_dir (.npy, written atomically)."""
    from tqdm import tqdm
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for step in tqdm(plan, desc="balancing (augmenting)", unit="clip", dynamic_ncols=True):
        src = waves[step["source"]]
        path = cache_dir / f"{cache_key(src, step)}.npy"
        if path.exists():
            out.append(np.load(path))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wave = augment(src, step["semitones"], step["rate"])
        atomic_write(path, lambda tmp, wave=wave: _save_npy(tmp, wave))
        out.append(wave)
    return out


def _save_npy(path: Path, wave: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, wave)


def stratified_head(idx: list[int], labels: list[str], n: int | None, seed: int) -> list[int]:
    """A stratified sample of n of idx (--limit): each class keeps its share, at least one clip."""
    if n is None or n >= len(idx):
        return idx
    rng = random.Random(seed)
    by = {}
    for i in idx:
        by.setdefault(labels[i], []).append(i)
    keep = []
    for label, members in sorted(by.items()):
        rng.shuffle(members)
        keep += members[:max(1, round(n * len(members) / len(idx)))]
    return sorted(keep)


def write_split_csv(path: Path, clips: list[Clip], split: dict, plan: list[dict]) -> None:
    """Which file went to which split, and which training files were copied with what augmentation:
    the record that shows no validation or test clip reached training."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "label", "speaker", "path", "augmentation"])
    for name, idx in split.items():
        w.writerows([name, clips[i].label, clips[i].speaker or "", clips[i].path, ""] for i in idx)
    for step in plan:
        clip = clips[split["train"][step["source"]]]
        w.writerow(["train", clip.label, clip.speaker or "", clip.path,
                    f"pitch {step['semitones']:+.2f} semitones, stretch x{step['rate']:.3f}"])
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8"))


@dataclass
class Corpus:
    """The clips read and split, and the balancing planned: everything checked, nothing written."""
    clips: list[Clip]
    raw: list[np.ndarray]  # 16 kHz mono, as read
    names: list[str]  # label names; a label's id is its index here
    parts: dict[str, list[int]]  # clip indices of each split
    plan: list[dict]  # augmented copies to add to the training split
    skipped: list[str]


@dataclass
class Dataset:
    """What the loop needs, built once: normalised clips and label ids per split (training:
    the originals, then the augmented copies), and what the report says about them."""
    names: list[str]
    waves: dict[str, list[torch.Tensor]]
    labels: dict[str, torch.Tensor]
    sizes: dict[str, int]  # original clips per split
    counts: dict  # training clips per class, before and after balancing
    clip_seconds: list[float]  # every readable clip's length
    skipped: list[str]


def read_corpus(clips: list[Clip], *, strict: bool, split: str, seed: int, limit: int | None, balance: bool,
                log=print) -> Corpus:
    """Read the clips, split them (random or by speaker), keep --limit of each split, and plan
    the training split's augmented copies. Writes nothing."""
    clips, raw, skipped = load_clips(clips, strict, log)
    names = sorted({c.label for c in clips})
    if len(names) < 2:
        raise UserError(f"the readable clips hold {len(names)} class ({', '.join(names)}); at least 2 are needed "
                        "to train a classifier")
    label_of = [c.label for c in clips]
    parts = split_random(label_of, seed) if split == "random" else \
        split_by_speaker(label_of, [c.speaker for c in clips], seed)
    parts = {k: stratified_head(v, label_of, limit, seed) for k, v in parts.items()}
    plan = balance_plan([label_of[i] for i in parts["train"]], seed) if balance else []
    return Corpus(clips, raw, names, parts, plan, skipped)


def build_dataset(corpus: Corpus, *, cache_dir: Path, do_normalize: bool, split_csv: Path) -> Dataset:
    """Compute the augmented copies (cached), write split.csv, and normalise every clip once."""
    clips, raw, parts, plan, names = corpus.clips, corpus.raw, corpus.parts, corpus.plan, corpus.names
    label_of = [c.label for c in clips]
    copies = augmented_copies([raw[i] for i in parts["train"]], plan, cache_dir)
    write_split_csv(split_csv, clips, parts, plan)
    waves = {k: [normalize(raw[i], do_normalize) for i in v] for k, v in parts.items()}
    waves["train"] += [normalize(w, do_normalize) for w in copies]
    labels = {k: torch.tensor([names.index(label_of[i]) for i in v], dtype=torch.long) for k, v in parts.items()}
    labels["train"] = torch.cat([labels["train"], torch.tensor([names.index(s["label"]) for s in plan],
                                                               dtype=torch.long)])
    before = Counter(label_of[i] for i in parts["train"])
    after = Counter(names[i] for i in labels["train"].tolist())
    return Dataset(names, waves, labels, {k: len(v) for k, v in parts.items()},
                   {"before": {n: before[n] for n in names}, "after": {n: after[n] for n in names}},
                   [len(w) / SAMPLE_RATE for w in raw], corpus.skipped)


def normalize(wave: np.ndarray, do_normalize: bool) -> torch.Tensor:
    """Zero mean, unit variance per clip (Wav2Vec2FeatureExtractor's formula) when the feature
    extractor asks for it; done once per clip, before any padding, not per batch."""
    x = torch.from_numpy(wave)
    if do_normalize:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    return x


def bucket_length(n: int, bucket: int = SAMPLE_RATE) -> int:
    """Pad up to whole seconds: a small fixed set of shapes instead of one per clip length."""
    return -(-n // bucket) * bucket


def bucket_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Evaluation order: clips sorted by length, batches formed within each whole-second bucket,
    so each clip is padded to its own bucket, exactly as ser.predict pads it alone."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(bucket_length(lengths[i]), []).append(i)
    return [g[j:j + size] for _, g in sorted(groups.items()) for j in range(0, len(g), size)]


def collate(waves: list[torch.Tensor], idx: list[int], labels: torch.Tensor, padding_value: float,
            device: torch.device, *, rows: int | None = None, weight: float = 1.0) -> dict:
    """The clips in idx zero-padded to the bucket of the longest, as host tensors (pinned for a
    CUDA device); `lengths` are the real sample counts. `rows` fills a short batch with copies of
    its first clip whose weight is 0 (training keeps one shape per bucket); `weight` is each real
    clip's weight in the loss."""
    n = len(idx)
    rows = rows or n
    take = list(idx) + [idx[0]] * (rows - n)
    lengths = torch.tensor([len(waves[i]) for i in take])
    x = torch.full((rows, bucket_length(int(lengths.max()))), padding_value)
    for row, i in enumerate(take):
        x[row, :len(waves[i])] = waves[i]
    batch = {"input_values": x, "lengths": lengths, "labels": labels[take],
             "weights": torch.tensor([weight] * n + [0.0] * (rows - n))}
    return {k: pinned(v, device) for k, v in batch.items()}


def check_shemo(folder: Path) -> dict[str, int]:
    """Usable clips per emotion in a ShEMO folder: ShEMO-named .wav files whose header soundfile
    can read and that hold samples. A UserError when fewer than two emotions have 3 clips each
    (what a split needs). Reads headers only: seconds for the whole corpus."""
    import soundfile as sf
    clips, _ = scan_shemo(folder)
    counts: Counter = Counter()
    for clip in clips:
        try:
            if sf.info(str(clip.path)).frames > 0:
                counts[clip.label] += 1
        except Exception:  # unreadable: training would skip it too
            pass
    usable = {k: v for k, v in sorted(counts.items()) if v >= 3}
    if len(usable) < 2:
        raise UserError(f"{folder}: {sum(counts.values())} readable ShEMO-named clips "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'}); at least two "
                        "emotions with 3 clips each are needed")
    return dict(sorted(counts.items()))


def main(argv=None):
    """python -m ser.data --check DIR: what run_all.sh asks before any training."""
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
