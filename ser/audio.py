"""Audio as the SER pipeline sees it (docs/ser.md, "Audio" and "Balancing"): read as 16 kHz mono float32,
checked, padded or cut, normalised per clip; and the augmented copies, cached by content. audiomentations
and torch are imported only when used, so `python -m ser.study --list` stays light."""
import hashlib
import io
import json
import warnings
from pathlib import Path

from dataclasses import dataclass

import numpy as np

from common.errors import UserError
from common.files import atomic_write

SAMPLE_RATE = 16000
MIN_SECONDS = 0.5  # shorter clips are zero-padded to this, so HuBERT's SpecAugment time masks fit
MAX_SECONDS = 60.0  # longer clips are cut to their first 60 s (a 10-minute clip would need tens of GB)
SILENCE = 1e-4  # a clip whose every sample lies within this of its mean is silent (zeros, or a constant: DC)
LOUDEST = 100.0  # audio read as float lies within about ±1; samples beyond this are not audio
# Every augmented copy's pitch shift and time stretch are drawn from these ranges (ours: the study gives none).
PITCH_SEMITONES = (-2.0, 2.0)
STRETCH_RATE = (0.85, 1.15)


@dataclass(frozen=True)
class Augmentation:
    """One augmented copy's draw: a pitch shift in semitones, then a time stretch by `rate`."""
    semitones: float
    rate: float


def sample_problem(wave: np.ndarray) -> str | None:
    """Why these samples (frames × channels) are unusable, or None; a constant (DC) is silence."""
    if wave.size == 0:
        return "is empty"
    if not np.isfinite(wave).all():
        return "holds NaN or infinite samples"
    peak = float(np.abs(wave).max())
    if peak > LOUDEST:
        return f"holds absurdly large samples (peak {peak:.3g}; audio read as float lies within about ±1)"
    mono = wave.mean(axis=1)
    if float(np.abs(mono - mono.mean(dtype=np.float64)).max()) < SILENCE:
        return f"is silent (every sample within {SILENCE} of the clip's mean: zeros, or a constant value)"
    return None


def read_audio(path: Path) -> np.ndarray:
    """A file as 16 kHz mono float32; a ValueError naming it when unreadable or unusable (the caller decides)."""
    import soundfile as sf
    import torch
    from torchaudio.functional import resample
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing, corrupt or unknown files
        raise ValueError(f"cannot read {path}: {e}") from None
    problem = sample_problem(wave)
    if problem:
        raise ValueError(f"{path} {problem}")
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


def normalize(wave: np.ndarray, do_normalize: bool):
    """A tensor, zero mean and unit variance (Wav2Vec2FeatureExtractor's formula) if asked: per clip, before padding."""
    import torch
    x = torch.from_numpy(wave)
    if do_normalize:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    return x


AUGMENT_METHODS = {"librosa": "librosa_phase_vocoder", "signalsmith": "signalsmith_stretch"}


def augment(wave: np.ndarray, draw: Augmentation, method: str = "librosa") -> np.ndarray:
    """Pitch shift, then time stretch (the length changes), with audiomentations' `method` backend."""
    from audiomentations import PitchShift, TimeStretch
    backend = AUGMENT_METHODS[method]
    out = PitchShift(min_semitones=draw.semitones, max_semitones=draw.semitones, method=backend, p=1.0)(
        wave, SAMPLE_RATE)
    out = TimeStretch(min_rate=draw.rate, max_rate=draw.rate, leave_length_unchanged=False, method=backend, p=1.0)(
        out, SAMPLE_RATE)
    return np.ascontiguousarray(out, dtype=np.float32)


def augmentation_settings(method: str) -> dict:
    """What defines a copy besides its source and draw (config.json, cache key), without importing audiomentations."""
    from common.run import package_version
    return {"method": AUGMENT_METHODS[method], "pitch_semitones": list(PITCH_SEMITONES),
            "stretch_rate": list(STRETCH_RATE), "audiomentations": package_version("audiomentations"),
            "sample_rate": SAMPLE_RATE}


def cache_key(wave: np.ndarray, draw: Augmentation, settings: dict) -> str:
    """A copy's name from its source's content, its draw and the settings: a stale file is never reused."""
    h = hashlib.sha256(wave.tobytes())
    h.update(json.dumps({"semitones": draw.semitones, "rate": draw.rate, **settings, "v": 2},
                        sort_keys=True).encode())
    return h.hexdigest()[:32]


def augmented_copies(waves: list[np.ndarray], plan: list[tuple[int, Augmentation]], cache_dir: Path,
                     method: str = "librosa", log=print) -> list[np.ndarray]:
    """Each planned copy ((index of its source in waves, draw)), computed once into cache_dir and cut
    to MAX_SECONDS; a damaged cached file is named in the log and computed again."""
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
    for source, draw in tqdm(plan, desc="balancing (augmenting)", unit="clip", dynamic_ncols=True):
        src = waves[source]
        path = cache_dir / f"{cache_key(src, draw, settings)}.npy"
        if path.exists():
            wave, why = _load_cached(path)
            if wave is not None:
                out.append(crop_long(wave))
                continue
            log(f"warning: cached copy {path} is damaged ({why}); computing it again")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wave = augment(src, draw, method)
        buffer = io.BytesIO()  # (np.save into a file names a full disk "N requested and M written"; the OS's words)
        np.save(buffer, wave)
        atomic_write(path, lambda tmp, data=buffer.getvalue(): tmp.write_bytes(data))
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
