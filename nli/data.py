"""FarsTail: find or download the three files, read them with CSV quoting, check every row,
tokenise each split once, and pad batches up to a few fixed lengths (buckets)."""
import hashlib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.device import pinned
from common.errors import UserError
from common.files import atomic_write, read_table
from common.inputs import files_record

# Fixed label ids (a label's id is its index), recorded in the saved model's id2label / label2id.
CODES = ["e", "c", "n"]  # as FarsTail's files write them
LABEL_NAMES = ["entailment", "contradiction", "neutral"]

FILES = {"train": "Train-word.csv", "val": "Val-word.csv", "test": "Test-word.csv"}
# The dataset's public repository at a pinned commit (not a branch), and the files' sha256 there.
COMMIT = "5d6322c"
URL = "https://github.com/dml-qom/FarsTail/raw/{commit}/data/{name}"
SHA256 = {
    "Train-word.csv": "552cfe796652dc5ea02d53cd23e8b9d1d6d243bbf05fea2d9f959e9b851fbdd3",
    "Val-word.csv": "a1f2a8bec45a597f5971c58911fabf3d9f7574b819bf637ab94f08f7be1c963e",
    "Test-word.csv": "d0dd25408036e5dd8587a8e0d98585b46b4a7d0057fece0992fb8d490ad44f4f",
}
HARD_COLUMNS = {"hard(hypothesis)": "hard_hypothesis", "hard(overlap)": "hard_overlap"}
# Batches are padded to a multiple of BUCKET word pieces (at most --max-length): at most 13 shapes at 200, each
# with its own CUDA graph; multiples of 16 also align the attention mask for the memory-efficient SDPA kernel.
BUCKET = 16


@dataclass
class Split:
    premise: list[str]
    hypothesis: list[str]
    label_ids: list[int]
    hard: dict[str, list[int]] = field(default_factory=dict)  # test only: hard_hypothesis, hard_overlap

    def __len__(self):
        return len(self.label_ids)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.premise[:n], self.hypothesis[:n], self.label_ids[:n],
                                            {k: v[:n] for k, v in self.hard.items()})


def download_farstail(data_dir: Path, log=print) -> None:
    """Download the files missing from data_dir and check their sha256; a failure says where to put them."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # (a file of that name, a read-only parent)
        raise UserError(f"--data-dir {data_dir} is not a folder and cannot be created ({e.strerror or e})") from None
    for name in FILES.values():
        dest = data_dir / name
        if dest.exists():
            continue
        url = URL.format(commit=COMMIT, name=name)
        log(f"downloading {url}")
        hint = (f"download it by hand from {url} (sha256 {SHA256[name]}) into {data_dir}/, "
                f"or point --data-dir at a folder holding {', '.join(FILES.values())}")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                body = r.read()
        except OSError as e:
            raise UserError(f"could not download {name} ({e}); {hint}") from None
        got = hashlib.sha256(body).hexdigest()
        if got != SHA256[name]:
            raise UserError(f"downloaded {name} has sha256 {got}, expected {SHA256[name]}; {hint}")
        atomic_write(dest, lambda tmp: tmp.write_bytes(body))


def read_split(path: Path) -> Split:
    """One FarsTail file: tab-separated, CSV quoting (fields may hold tabs, quotes, newlines), UTF-8, checked."""
    cols, rows = read_table(path, delimiter="\t")
    missing = [c for c in ("premise", "hypothesis", "label") if c not in cols]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(cols) or 'none'})")
    hard_cols = [c for c in HARD_COLUMNS if c in cols]
    split = Split([], [], [], {HARD_COLUMNS[c]: [] for c in hard_cols})
    for line, row in rows:
        label = (row["label"] or "").strip()
        if label not in CODES:
            raise UserError(f"{path}, line {line}: unknown label {label!r} (expected one of {', '.join(CODES)})")
        for col, texts in (("premise", split.premise), ("hypothesis", split.hypothesis)):
            if not (row[col] or "").strip():
                raise UserError(f"{path}, line {line}: empty {col}")
            texts.append(row[col].strip())
        split.label_ids.append(CODES.index(label))
        for c in hard_cols:
            value = (row[c] or "").strip()
            if value not in ("0", "1"):
                raise UserError(f"{path}, line {line}: column {c} must be 0 or 1, got {value!r}")
            split.hard[HARD_COLUMNS[c]].append(int(value))
    if not split.label_ids:
        raise UserError(f"{path}: no rows")
    return split


def load_farstail(data_dir: Path, limit: int | None = None, log=print) -> dict[str, Split]:
    """The three splits (downloaded if missing), the first `limit` rows of each; a one-label training split refused."""
    download_farstail(data_dir, log)
    splits = {k: read_split(data_dir / name).head(limit) for k, name in FILES.items()}
    present = sorted(set(splits["train"].label_ids))
    if len(present) < 2:
        raise UserError(f"{data_dir / FILES['train']}: the training pairs{f' (first {limit})' if limit else ''} all "
                        f"have the label {CODES[present[0]]!r}; a classifier needs at least two labels to train on")
    return splits


def farstail_record(data_dir: Path) -> dict:
    """The fingerprint of the three files (size and SHA-256): what config.json and checkpoints keep."""
    return files_record(data_dir, FILES.values())


def load_tokenizer(model: str):
    """The tokenizer saved with --model (hub id or folder); a UserError naming it if it cannot load."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError, TypeError) as e:  # (no tokenizer there, or one of another kind of model)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"--model {model}: cannot load its tokenizer ({first}); give a save_pretrained folder of a "
                        "BERT with its tokenizer, or a hub id") from None


def check_max_length(max_length: int, tokenizer, positions: int | None) -> None:
    """--max-length holds the special tokens and a word piece of each sentence, within `positions`."""
    least = tokenizer.num_special_tokens_to_add(pair=True) + 2
    if max_length < least:
        raise UserError(f"--max-length {max_length}: a pair needs at least {least} word pieces (its special tokens "
                        "and one of each sentence)")
    if positions and max_length > positions:
        raise UserError(f"--max-length {max_length}: the model has {positions} position embeddings; give at most "
                        f"{positions}")


def bucket_length(n: int, max_length: int) -> int:
    """The padded length of a batch whose longest pair has n word pieces."""
    return min(-(-n // BUCKET) * BUCKET, max_length)


@dataclass
class Encoded:
    """One tokenised split, padded once to the bucket of its longest pair: ids, segment ids, lengths, labels."""
    ids: torch.Tensor
    types: torch.Tensor
    lengths: torch.Tensor
    label_ids: torch.Tensor
    max_length: int

    def __len__(self):
        return len(self.label_ids)


def encode(tokenizer, split: Split, max_length: int, hypothesis_only: bool = False) -> Encoded:
    """[CLS] premise [SEP] hypothesis [SEP] (with `hypothesis_only`: [CLS] hypothesis [SEP]),
    truncated to max_length, once, into padded matrices that every batch is sliced from."""
    texts = (split.hypothesis,) if hypothesis_only else (split.premise, split.hypothesis)
    enc = tokenizer(*texts, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    lengths = torch.tensor([len(x) for x in enc["input_ids"]])
    width = bucket_length(int(lengths.max()), max_length)
    ids = torch.full((len(lengths), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    tt = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, (x, t) in enumerate(zip(enc["input_ids"], types)):
        ids[row, :len(x)] = torch.tensor(x)
        tt[row, :len(t)] = torch.tensor(t)
    return Encoded(ids, tt, lengths, torch.tensor(split.label_ids), max_length)


def collate(data: Encoded, idx: list[int], device: torch.device, *, rows: int | None = None, weight: float = 1.0,
            sdpa_mask: bool = True) -> dict:
    """The pairs in idx padded to their bucket, host tensors (pinned for CUDA); `rows` fills a short batch with
    zero-weight copies of its first pair; `weight`: each real pair's. For SDPA a ready 4D boolean mask, which
    transformers passes without its `mask.all()` check (a host sync per forward)."""
    n = len(idx)
    rows = rows or n
    take = torch.tensor(list(idx) + [idx[0]] * (rows - n))
    lengths = data.lengths[take]
    width = bucket_length(int(lengths.max()), data.max_length)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    batch = {"input_ids": data.ids[take, :width], "token_type_ids": data.types[take, :width],
             "attention_mask": mask[:, None, None, :] if sdpa_mask else mask.long(), "label_ids": data.label_ids[take],
             "weights": torch.tensor([weight] * n + [0.0] * (rows - n))}
    return {k: pinned(v.contiguous(), device) for k, v in batch.items()}


def label_counts(data: dict[str, Encoded]) -> dict:
    """Pairs per label name in each split."""
    return {k: {n: int((v.label_ids == i).sum()) for i, n in enumerate(LABEL_NAMES)} for k, v in data.items()}


def token_stats(tokenizer, split: Split, max_length: int) -> tuple[dict, dict]:
    """As the study reported: the longest premise and hypothesis in word pieces (special tokens
    not counted), and how many pairs max_length truncates. Returns (stats, per-pair lengths)."""
    p = [len(x) for x in tokenizer(split.premise, add_special_tokens=False)["input_ids"]]
    h = [len(x) for x in tokenizer(split.hypothesis, add_special_tokens=False)["input_ids"]]
    extra = tokenizer.num_special_tokens_to_add(pair=True)
    truncated = sum(a + b + extra > max_length for a, b in zip(p, h))
    return ({"max_premise_tokens": max(p), "max_hypothesis_tokens": max(h), "truncated_pairs": int(truncated)},
            {"premise": p, "hypothesis": h})
