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
from common.files import atomic_write, read_table
from common.inputs import files_record
from common.run import package_version

SAMPLE_RATE = 16000
MIN_SECONDS = 0.5  # shorter clips are zero-padded to this, so HuBERT's SpecAugment time masks fit
MAX_SECONDS = 60.0  # longer clips are cut to their first 60 s (a 10-minute clip would need tens of GB)
SILENCE = 1e-4  # a clip whose every sample is below this in magnitude is treated as silent
LOUDEST = 100.0  # audio read as float lies within about ±1; samples beyond this are not audio
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


def shemo_wavs(folder: Path) -> list[Path]:
    """Every *.wav under folder (any sub-folders), sorted."""
    if not folder.is_dir():
        raise UserError(f"--data-dir {folder}: no such folder (ShEMO: unzip it and point --data-dir at it)")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav")


def scan_shemo(folder: Path) -> tuple[list[Clip], list[str]]:
    """Every *.wav under folder (any sub-folders); returns the clips and the names that do not parse."""
    clips, bad = [], []
    for path in shemo_wavs(folder):
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
    cols, rows = read_table(path)
    if "path" not in cols or "label" not in cols:
        raise UserError(f"{path}: needs columns path,label[,speaker] (found: {', '.join(cols) or 'none'})")
    clips = []
    for line, row in rows:
        if not (row["path"] or "").strip() or not (row["label"] or "").strip():
            raise UserError(f"{path}, line {line}: empty path or label")
        clips.append(Clip(path.parent / row["path"].strip(), row["label"].strip(),
                          (row.get("speaker") or "").strip() or None))
    if not clips:
        raise UserError(f"{path}: no rows")
    return clips


def corpus_record(data_dir: Path | None, manifest: Path | None) -> dict:
    """The fingerprint of the corpus (common/inputs.py): every clip by size and modification time,
    and the manifest by its SHA-256."""
    if data_dir is not None:
        folder = Path(data_dir)
        wavs = shemo_wavs(folder) if folder.is_dir() else []  # (a folder that is gone: common.inputs skips it)
        return {"data": files_record(folder, [p.relative_to(folder).as_posix() for p in wavs], hashed=False)}
    root = Path(manifest).parent
    clips = [c.path.relative_to(root).as_posix() if c.path.is_relative_to(root) else str(c.path)
             for c in read_manifest(Path(manifest))]
    return {"manifest": files_record(root, [Path(manifest).name]), "data": files_record(root, clips, hashed=False)}


def sample_problem(wave: np.ndarray) -> str | None:
    """What makes these samples unusable for a model (None: nothing): none at all, NaN or
    infinite ones, absurdly large ones, or silence. Details follow in parentheses."""
    if wave.size == 0:
        return "is empty"
    if not np.isfinite(wave).all():
        return "holds NaN or infinite samples"
    peak = float(np.abs(wave).max())
    if peak > LOUDEST:
        return f"holds absurdly large samples (peak {peak:.3g}; audio read as float lies within about ±1)"
    if peak < SILENCE:
        return f"is silent (every sample below {SILENCE})"
    return None


def check_samples(wave: np.ndarray, path) -> None:
    """ValueError naming the file unless its samples are usable (sample_problem)."""
    problem = sample_problem(wave)
    if problem:
        raise ValueError(f"{path} {problem}")


def read_audio(path: Path) -> np.ndarray:
    """A file as 16 kHz mono float32: channels averaged, resampled with torchaudio. Raises
    ValueError (unreadable, empty, silent, or holding NaN, infinite or absurdly large samples),
    naming the file, so the caller decides between skipping and stopping."""
    import soundfile as sf
    from torchaudio.functional import resample
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing, corrupt or unknown files
        raise ValueError(f"cannot read {path}: {e}") from None
    check_samples(wave, path)
    wave = wave.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def pad_short(wave: np.ndarray) -> np.ndarray:
    """Zero-pad a clip shorter than MIN_SECONDS up to it (training and prediction alike)."""
    short = int(MIN_SECONDS * SAMPLE_RATE) - len(wave)
    return np.pad(wave, (0, short)) if short > 0 else wave


def crop_long(wave: np.ndarray) -> np.ndarray:
    """The first MAX_SECONDS of a longer clip (training, evaluation and prediction alike)."""
    return wave[:int(MAX_SECONDS * SAMPLE_RATE)]


def load_clips(clips: list[Clip], strict: bool, log=print) -> tuple[list[Clip], list[np.ndarray], list[str]]:
    """Read every clip; unreadable, empty or silent files are skipped with a warning naming them
    (an error with strict). Clips under MIN_SECONDS are zero-padded to it; clips over MAX_SECONDS
    are cut to it, each named in the log."""
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
# How augmented copies are made: the method (audiomentations' backend) and the ranges the
# parameters are drawn from; all of it goes into config.json and into each copy's cache key.
AUGMENT_METHODS = {"librosa": "librosa_phase_vocoder", "signalsmith": "signalsmith_stretch"}


def augment(wave: np.ndarray, semitones: float, rate: float, method: str = "librosa") -> np.ndarray:
    """Pitch shift then time stretch (which changes the length), both always applied, with
    audiomentations' `method` backend (librosa's phase vocoder, as the study used librosa, or
    signalsmith_stretch, audiomentations' own default)."""
    from audiomentations import PitchShift, TimeStretch
    backend = AUGMENT_METHODS[method]
    out = PitchShift(min_semitones=semitones, max_semitones=semitones, method=backend, p=1.0)(wave, SAMPLE_RATE)
    out = TimeStretch(min_rate=rate, max_rate=rate, leave_length_unchanged=False, method=backend, p=1.0)(
        out, SAMPLE_RATE)
    return np.ascontiguousarray(out, dtype=np.float32)


def augmentation_settings(method: str) -> dict:
    """What defines an augmented copy besides its source and drawn parameters (config.json, cache
    key). Read without importing audiomentations, which is needed only when copies are made."""
    return {"method": AUGMENT_METHODS[method], "pitch_semitones": list(PITCH_SEMITONES),
            "stretch_rate": list(STRETCH_RATE), "audiomentations": package_version("audiomentations"),
            "sample_rate": SAMPLE_RATE}


def balance_plan(labels: list[str], seed: int) -> list[dict]:
    """The augmented copies that bring every class up to the largest class's count: copies come
    from the class's own clips in turn (`source`: an index into labels), each with its own seeded
    pitch shift and stretch rate."""
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


def cache_key(wave: np.ndarray, step: dict, settings: dict) -> str:
    """Names an augmented clip by its source audio's content, the augmentation's parameters and
    settings (method, ranges, audiomentations version), so a change of data, seed or settings
    never reuses a stale file."""
    h = hashlib.sha256(wave.tobytes())
    h.update(json.dumps({"semitones": step["semitones"], "rate": step["rate"], **settings, "v": 2},
                        sort_keys=True).encode())
    return h.hexdigest()[:32]


def augmented_copies(waves: list[np.ndarray], plan: list[dict], cache_dir: Path, method: str = "librosa",
                     log=print) -> list[np.ndarray]:
    """Compute each planned copy of waves[step["source"]] once and keep it in cache_dir (.npy,
    written atomically). A cached file that does not load or holds no usable audio (truncated,
    empty, NaN) is named in the log and computed again. Each copy is cut to MAX_SECONDS."""
    from tqdm import tqdm
    if not plan:
        return []
    settings = augmentation_settings(method)
    if settings["audiomentations"] == "not installed":
        raise UserError("balancing needs audiomentations (pip install -r requirements.txt); or train without "
                        "copies: --no-balance")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--cache-dir {cache_dir}: cannot create it ({e.strerror or e})") from None
    out = []
    for step in tqdm(plan, desc="balancing (augmenting)", unit="clip", dynamic_ncols=True):
        src = waves[step["source"]]
        path = cache_dir / f"{cache_key(src, step, settings)}.npy"
        if path.exists():
            wave, why = _load_cached(path)
            if wave is not None:
                out.append(crop_long(wave))
                continue
            log(f"warning: cached copy {path} is damaged ({why}); computing it again")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wave = augment(src, step["semitones"], step["rate"], method)
        atomic_write(path, lambda tmp, wave=wave: _save_npy(tmp, wave))
        out.append(crop_long(wave))
    return out


def _load_cached(path: Path) -> tuple[np.ndarray | None, str]:
    """(the cached copy, "") or (None, why it cannot be used)."""
    try:
        wave = np.load(path)
    except Exception as e:  # truncated or empty files raise several types
        return None, f"unreadable: {type(e).__name__}"
    if wave.ndim != 1 or wave.dtype != np.float32 or wave.size == 0:
        return None, f"shape {wave.shape}, {wave.dtype}"
    if not np.isfinite(wave).all():
        return None, "NaN or infinite samples"
    return wave, ""


def _save_npy(path: Path, wave: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, wave)


# ---------------------------------------------------------------- protocols: which item goes where
@dataclass(frozen=True)
class Item:
    """One example: clip number `clip` as read (`step` None), or an augmented copy of it."""
    clip: int
    step: dict | None = None

    def __hash__(self):
        return hash((self.clip, None if self.step is None else (self.step["semitones"], self.step["rate"])))


def stratified_head(idx: list, labels, n: int | None, seed: int) -> list:
    """A stratified sample of n of idx (--limit), in idx's order: each class keeps its share, at
    least one element. `labels(x)` gives an element's label."""
    if n is None or n >= len(idx):
        return idx
    rng = random.Random(seed)
    by: dict[str, list[int]] = {}
    for pos, x in enumerate(idx):
        by.setdefault(labels(x), []).append(pos)
    keep = []
    for _, members in sorted(by.items()):
        rng.shuffle(members)
        keep += members[:max(1, round(n * len(members) / len(idx)))]
    return [idx[p] for p in sorted(keep)]


def leak_free_items(labels: list[str], speakers: list, *, split: str, seed: int, limit: int | None,
                    balance: bool) -> dict[str, list[Item]]:
    """Ours: split the clips first (stratified random, or by speaker), keep --limit of each split,
    then add augmented copies of training clips only, so no copy of a validation or test clip is
    ever trained on."""
    parts = split_random(labels, seed) if split == "random" else split_by_speaker(labels, speakers, seed)
    parts = {k: stratified_head(v, labels.__getitem__, limit, seed) for k, v in parts.items()}
    items = {k: [Item(i) for i in v] for k, v in parts.items()}
    if balance:
        train = parts["train"]
        items["train"] += [Item(train[s["source"]], s) for s in balance_plan([labels[i] for i in train], seed)]
    return items


def study_items(labels: list[str], *, seed: int, limit: int | None) -> dict[str, list[Item]]:
    """The study's: balance the whole corpus with augmented copies up to the largest class, then
    split every item at random (scikit-learn's train_test_split, test_size 0.2 then 0.5, not
    stratified, random_state = --seed). Copies of a validation or test clip can land in training,
    and the test split holds copies too."""
    from sklearn.model_selection import train_test_split
    pool = [Item(i) for i in range(len(labels))] + [Item(s["source"], s) for s in balance_plan(labels, seed)]
    train, rest = train_test_split(pool, test_size=0.2, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed)
    label = lambda item: labels[item.clip]  # noqa: E731
    return {k: stratified_head(v, label, limit, seed) for k, v in (("train", train), ("val", val), ("test", test))}


def write_split_csv(path: Path, clips: list[Clip], items: dict[str, list[Item]]) -> None:
    """Every item's split, source file and augmentation, and which other splits hold the same
    source clip (as itself or as a copy): the record that shows whether a validation or test
    clip reached training."""
    where: dict[int, set] = {}
    for name, its in items.items():
        for it in its:
            where.setdefault(it.clip, set()).add(name)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "label", "speaker", "path", "augmentation", "source_also_in"])
    for name, its in items.items():
        for it in its:
            clip = clips[it.clip]
            aug = "" if it.step is None else \
                f"pitch {it.step['semitones']:+.2f} semitones, stretch x{it.step['rate']:.3f}"
            w.writerow([name, clip.label, clip.speaker or "", clip.path, aug,
                        ";".join(sorted(where[it.clip] - {name}))])
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8"))


@dataclass
class Corpus:
    """The clips read, and which item goes to which split: everything checked, nothing written."""
    clips: list[Clip]
    raw: list[np.ndarray]  # 16 kHz mono, as read
    names: list[str]  # label names; a label's id is its index here
    items: dict[str, list[Item]]
    skipped: list[str]


@dataclass
class Dataset:
    """What the loop needs, built once: normalised waves and label ids per split, and what the
    report says about them."""
    names: list[str]
    waves: dict[str, list[torch.Tensor]]
    labels: dict[str, torch.Tensor]
    copies: dict[str, int]  # augmented copies per split
    counts: dict  # clips per class: the corpus as read, training before/after balancing, each split
    clip_seconds: list[float]  # every readable clip's length
    skipped: list[str]


def read_corpus(clips: list[Clip], *, strict: bool, protocol: str, split: str, seed: int, limit: int | None,
                balance: bool, log=print) -> Corpus:
    """Read the clips and decide each item's split under `protocol` (study or leak-free). Writes
    nothing."""
    clips, raw, skipped = load_clips(clips, strict, log)
    names = sorted({c.label for c in clips})
    if len(names) < 2:
        raise UserError(f"the readable clips hold {len(names)} class ({', '.join(names)}); at least 2 are needed "
                        "to train a classifier")
    labels = [c.label for c in clips]
    if protocol == "study":
        items = study_items(labels, seed=seed, limit=limit)
    else:
        items = leak_free_items(labels, [c.speaker for c in clips], split=split, seed=seed, limit=limit,
                                balance=balance)
    return Corpus(clips, raw, names, items, skipped)


def build_dataset(corpus: Corpus, *, cache_dir: Path, do_normalize: bool, split_csv: Path | None,
                  method: str = "librosa", log=print) -> Dataset:
    """Compute the augmented copies (cached), write split.csv (unless None), and normalise every
    wave once."""
    clips, raw, names, items = corpus.clips, corpus.raw, corpus.names, corpus.items
    planned = list(dict.fromkeys(it for its in items.values() for it in its if it.step is not None))
    made = augmented_copies(raw, [dict(it.step, source=it.clip) for it in planned], cache_dir, method, log)
    copy_of = dict(zip(planned, made))
    if split_csv is not None:
        write_split_csv(split_csv, clips, items)
    waves = {k: [normalize(raw[it.clip] if it.step is None else copy_of[it], do_normalize) for it in its]
             for k, its in items.items()}
    labels = {k: torch.tensor([names.index(clips[it.clip].label) for it in its], dtype=torch.long)
              for k, its in items.items()}
    per_class = lambda its: {n: sum(clips[it.clip].label == n for it in its) for n in names}  # noqa: E731
    counts = {"corpus": per_class([Item(i) for i in range(len(clips))]),
              "before": per_class([it for it in items["train"] if it.step is None]),
              "after": per_class(items["train"]), "splits": {k: per_class(v) for k, v in items.items()}}
    return Dataset(names, waves, labels, {k: sum(it.step is not None for it in v) for k, v in items.items()},
                   counts, [len(w) / SAMPLE_RATE for w in raw], corpus.skipped)


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
    """Usable clips per emotion in a ShEMO folder: ShEMO-named .wav files whose samples soundfile
    can read and training would keep (not empty, silent, NaN or absurdly large; check_samples).
    A UserError when fewer than two emotions have 3 usable clips each (what a split needs).
    Decodes every clip once (no resampling): well under a minute for ShEMO's 3,000 clips."""
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
    usable = {k: v for k, v in sorted(counts.items()) if v >= 3}
    if len(usable) < 2:
        unusable = "; ".join(f"{n} {w}" for w, n in why.most_common())
        raise UserError(f"{folder}: {sum(counts.values())} usable ShEMO-named clips "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'})"
                        f"{f'; unusable: {unusable}' if unusable else ''}; at least two emotions with 3 usable clips "
                        "each are needed")
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
