"""Which item goes where (docs/ser.md, "Protocols"): the splits, the balance plan (the augmented copies
that even the classes), and `Protocol`, which combines them. Ours split first: augmenting before the
split (as the study did) lets copies of a test clip into training, inflating test accuracy."""
import random
import warnings
from collections import Counter
from dataclasses import dataclass

from common.errors import UserError
from ser.audio import PITCH_SEMITONES, STRETCH_RATE, Augmentation

STUDY_RANDOM_STATE = 10  # the study's train_test_split(..., random_state=10), both splits


@dataclass(frozen=True)
class Item:
    """One example: clip number `clip` of the corpus as read, or (with `augmentation`) a copy of it."""
    clip: int
    augmentation: Augmentation | None = None


def split_random(clip_labels: list[str], seed: int) -> dict[str, list[int]]:
    """Stratified 80/10/10: per class, a seeded shuffle, then 10% test, 10% validation (1 at least), the rest train."""
    rng = random.Random(seed)
    out = {"train": [], "val": [], "test": []}
    for label in sorted(set(clip_labels)):
        idx = [i for i, y in enumerate(clip_labels) if y == label]
        if len(idx) < 3:
            raise UserError(f"class {label!r} has {len(idx)} clip(s); at least 3 are needed to split 80/10/10")
        rng.shuffle(idx)
        n = max(1, round(0.1 * len(idx)))
        out["test"] += idx[:n]
        out["val"] += idx[n:2 * n]
        out["train"] += idx[2 * n:]
    return {k: sorted(v) for k, v in out.items()}


def split_by_speaker(clip_labels: list[str], speakers: list[str | None], seed: int) -> dict[str, list[int]]:
    """No speaker in two splits. Speakers, largest first (ties in seeded order), each go to the
    split whose per-class targets (80/10/10 of each class) they fill best, so classes are as
    even across splits as the speakers allow."""
    if any(s is None for s in speakers):
        raise UserError("--split speaker needs a speaker for every clip (ShEMO names, or a manifest speaker column)")
    names = sorted(set(speakers))
    if len(names) < 3:
        raise UserError(f"--split speaker needs at least 3 speakers, found {len(names)}")
    classes, total = sorted(set(clip_labels)), Counter(clip_labels)
    count = {s: Counter(y for y, t in zip(clip_labels, speakers) if t == s) for s in names}
    frac = {"train": 0.8, "val": 0.1, "test": 0.1}
    have = {k: Counter() for k in frac}
    random.Random(seed).shuffle(names)
    names.sort(key=lambda s: -sum(count[s].values()))
    assign = {}
    for s in names:
        # an empty split takes the next speaker; otherwise the split with the most unmet need for this speaker's classes
        empty = [k for k in ("test", "val") if not any(have[k].values())]
        best = empty[0] if empty else max(frac, key=lambda k: sum(
            count[s][c] * (frac[k] * total[c] - have[k][c]) / total[c] for c in classes))
        assign[s] = best
        have[best].update(count[s])
    return {k: [i for i, s in enumerate(speakers) if assign[s] == k] for k in frac}


@dataclass(frozen=True)
class Protocol:
    """--protocol (`kind`), --split, --no-balance (not `balance`), --split-seed, --folds, and `fold`, the
    fold a run trains (ser.train --folds runs each in turn); what each does: `description`, docs/ser.md."""
    kind: str = "leak-free"
    split: str = "random"
    balance: bool = True
    split_seed: int | None = None
    folds: int | None = None
    fold: int | None = None

    def seed_of_split(self, seed: int) -> int:
        """The seed the split is drawn with, given the run's training seed."""
        if self.split_seed is not None:
            return self.split_seed
        return STUDY_RANDOM_STATE if self.kind == "study" else seed

    @property
    def name(self) -> str:
        """Its folder under runs/ser/ and metrics.json's `experiment`."""
        if self.kind == "study":
            return "study"
        folds = (f"-fold{self.fold}of{self.folds}" if self.fold else "-folds") if self.folds else ""
        return f"leak-free-{self.split}" + ("" if self.balance else "-no-balance") + folds

    @property
    def flags(self) -> str:
        """The ser.train flags that make it."""
        if self.kind == "study":
            return "--protocol study"
        return (f"--protocol leak-free --split {self.split}" + ("" if self.balance else " --no-balance")
                + (f" --folds {self.folds}" if self.folds else ""))

    @property
    def description(self) -> str:
        """metrics.json's `protocol`: what the split and the balancing were."""
        if self.kind == "study":
            return ("study: whole corpus balanced by pitch-shift/time-stretch copies, then a random 80/10/10 split "
                    "(not stratified); augmented copies in every split")
        split = (f"speaker-independent {self.folds}-fold split (fold {self.fold or 'k'} tested, the next validating, "
                 "the others training)" if self.folds else
                 f"{'stratified random' if self.split == 'random' else 'speaker-independent'} 80/10/10 split")
        return (f"leak-free: {split}, then " + ("the training split balanced by pitch-shift/time-stretch copies"
                                                if self.balance else "no balancing")
                + "; validation and test hold original clips only")

    @property
    def what(self) -> str:
        """The summary's words for it, beside the study's own figures (the folds have their own: ser/study.py)."""
        if self.kind == "study":
            return ("the study's: the whole corpus balanced by augmentation, then split 80/10/10 at random (not "
                    "stratified); copies of validation and test clips can be trained on, and test holds copies")
        if self.split == "random":
            return ("ours: a stratified random 80/10/10 split first, then the training split alone balanced; "
                    "speakers are shared between splits, as in the study")
        return "ours: no speaker in two splits, then the training split alone balanced"

    def items(self, clip_labels: list[str], speakers: list, seed: int, limit: int | None) -> dict[str, list[Item]]:
        """Each split's items (`clip_labels`, `speakers`: of every clip read), checked (check_classes)."""
        split_seed = self.seed_of_split(seed)
        if self.kind == "study":
            items = study_items(clip_labels, seed=seed, split_seed=split_seed, limit=limit)
        elif self.fold:  # (a fold's copies and --limit are drawn with the training seed)
            parts = fold_split(clip_labels, speakers, self.fold, self.folds, split_seed)
            items = balanced(parts, clip_labels, seed, limit, self.balance)
        else:  # (the copies and --limit drawn with the split's seed)
            parts = (split_random(clip_labels, split_seed) if self.split == "random"
                     else split_by_speaker(clip_labels, speakers, split_seed))
            items = balanced(parts, clip_labels, split_seed, limit, self.balance)
        check_classes(items, clip_labels, self.flags + (f" (fold {self.fold})" if self.fold else ""))
        return items


def check_classes(items: dict[str, list[Item]], clip_labels: list[str], flags: str) -> None:
    """The split as drawn: every split holds items, and the training split at least two classes."""
    for name, its in items.items():
        classes = sorted({clip_labels[it.clip] for it in its})
        if not classes:
            raise UserError(f"{flags}: the {name} split is empty; the corpus is too small for this split")
        if name == "train" and len(classes) < 2:
            raise UserError(f"{flags}: the training split holds one class ({classes[0]}), and a model trained on it "
                            "can only ever predict that one; this corpus needs its classes spread over the splits "
                            "(split by speaker: speakers who each record several classes)")


def stratified_head(idx: list, labels: list[str], n: int | None, seed: int) -> list:
    """A stratified sample of n of idx (--limit), in idx's order: each class (`labels`, one per
    element) keeps its share, at least one element."""
    if n is None or n >= len(idx):
        return idx
    rng = random.Random(seed)
    keep = []
    for label in sorted(set(labels)):
        members = [pos for pos, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        keep += members[:max(1, round(n * len(members) / len(idx)))]
    return [idx[p] for p in sorted(keep)]


def balance_plan(clip_labels: list[str], seed: int) -> list[tuple[int, Augmentation]]:
    """(source index, draw) per copy that brings a class up to the largest's count, sources taken from the
    class's own clips in turn, each draw a seeded pitch shift and stretch rate."""
    rng = random.Random(seed)
    by_class = [[i for i, y in enumerate(clip_labels) if y == label] for label in sorted(set(clip_labels))]
    target = max(map(len, by_class))
    return [(members[k % len(members)], Augmentation(rng.uniform(*PITCH_SEMITONES), rng.uniform(*STRETCH_RATE)))
            for members in by_class for k in range(target - len(members))]


def balanced(parts: dict[str, list[int]], clip_labels: list[str], seed: int, limit: int | None, balance: bool
             ) -> dict[str, list[Item]]:
    """Each split's clips as items (--limit: N of each), the training split alone balanced when `balance`."""
    parts = {k: stratified_head(v, [clip_labels[i] for i in v], limit, seed) for k, v in parts.items()}
    items = {k: [Item(i) for i in v] for k, v in parts.items()}
    if balance:
        train = parts["train"]
        items["train"] += [Item(train[s], draw) for s, draw in balance_plan([clip_labels[i] for i in train], seed)]
    return items


def speaker_folds(clip_labels: list[str], speakers: list, folds: int, seed: int) -> list[list[int]]:
    """Each fold's clip indices, no speaker in two (StratifiedGroupKFold, shuffled with `seed`)."""
    from sklearn.model_selection import StratifiedGroupKFold
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # (a class with fewer clips than folds: it warns, and still splits)
        warnings.simplefilter("ignore")
        return [sorted(test.tolist()) for _, test in splitter.split(clip_labels, clip_labels, groups=speakers)]


def check_fold_speakers(speakers: list, folds: int) -> None:
    """--folds K needs a speaker for every clip and at least K speakers (checked before any audio is read)."""
    if any(s is None for s in speakers):
        raise UserError("--folds needs a speaker for every clip (ShEMO names, or a manifest speaker column)")
    if len(set(speakers)) < folds:
        raise UserError(f"--folds {folds}: the corpus has {len(set(speakers))} speakers; give at most that many folds")


def fold_split(clip_labels: list[str], speakers: list, fold: int, folds: int, seed: int) -> dict[str, list[int]]:
    """Fold `fold` (1-based) of `folds`: it is tested, the next fold validates, the others train."""
    parts = speaker_folds(clip_labels, speakers, folds, seed)
    return {"train": sorted(i for k, p in enumerate(parts) if k not in (fold - 1, fold % folds) for i in p),
            "val": parts[fold % folds], "test": parts[fold - 1]}


def study_items(clip_labels: list[str], *, seed: int, split_seed: int, limit: int | None) -> dict[str, list[Item]]:
    """The study's: the whole corpus balanced (copies drawn with `seed`), then split at random as its code
    does (docs/ser.md, "Protocols"): train_test_split 0.2, then 0.5, the first part of the second the test set."""
    from sklearn.model_selection import train_test_split
    pool = [Item(i) for i in range(len(clip_labels))] + [Item(s, draw) for s, draw in balance_plan(clip_labels, seed)]
    try:
        train, rest = train_test_split(pool, test_size=0.2, random_state=split_seed)
        test, val = train_test_split(rest, test_size=0.5, random_state=split_seed)
    except ValueError:  # (scikit-learn: a part would be empty)
        raise UserError(f"--protocol study: the balanced corpus holds {len(pool)} items, too few to split 80/10/10 "
                        "(at least 6 are needed)") from None
    return {k: stratified_head(v, [clip_labels[it.clip] for it in v], limit, seed)
            for k, v in (("train", train), ("val", val), ("test", test))}


def item_records(clips: list, items: dict[str, list[Item]]) -> dict[str, list[dict]]:
    """split.csv's rows per split; `source_also_in` (the other splits holding the same source clip) shows
    whether a validation or test clip reached training."""
    where: dict[int, set] = {}
    for name, its in items.items():
        for it in its:
            where.setdefault(it.clip, set()).add(name)

    def record(name: str, it: Item) -> dict:
        clip, aug = clips[it.clip], it.augmentation
        return {"label": clip.label, "speaker": clip.speaker or "", "path": str(clip.path),
                "augmentation": "" if aug is None else f"pitch {aug.semitones:+.2f} semitones, stretch x{aug.rate:.3f}",
                "source_also_in": ";".join(sorted(where[it.clip] - {name}))}
    return {name: [record(name, it) for it in its] for name, its in items.items()}
