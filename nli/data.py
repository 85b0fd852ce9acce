"""FarsTail: find or download the three files, read them with CSV quoting, check every row,
tokenise each split once, and pad batches to their own longest pair."""
import csv
import hashlib
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.run import UserError, to_device

# Fixed label ids, recorded in the saved model's id2label / label2id.
CODES = ["e", "c", "n"]
LABELS = ["entailment", "contradiction", "neutral"]

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


@dataclass
class Split:
    premise: list[str]
    hypothesis: list[str]
    label: list[int]
    hard: dict[str, list[int]] = field(default_factory=dict)  # test only: hard_hypothesis, hard_overlap

    def __len__(self):
        return len(self.label)

    def head(self, n: int | None) -> "Split":
        if n is None:
            return self
        return Split(self.premise[:n], self.hypothesis[:n], self.label[:n], {k: v[:n] for k, v in self.hard.items()})


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_farstail(data_dir: Path, log=print) -> None:
    """Download the files missing from data_dir and check their sha256; a failure says where to put them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        dest = data_dir / name
        if dest.exists():
            continue
        url = URL.format(commit=COMMIT, name=name)
        log(f"downloading {url}")
        hint = (f"download it by hand from {url} (sha256 {SHA256[name]}) into {data_dir}/, "
                f"or point --data-dir at a folder holding {', '.join(FILES.values())}")
        with tempfile.NamedTemporaryFile(dir=data_dir, delete=False, suffix=".part") as tmp:
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    tmp.write(r.read())
            except OSError as e:
                Path(tmp.name).unlink()
                raise UserError(f"could not download {name} ({e}); {hint}") from None
        got = sha256(Path(tmp.name))
        if got != SHA256[name]:
            Path(tmp.name).unlink()
            raise UserError(f"downloaded {name} has sha256 {got}, expected {SHA256[name]}; {hint}")
        Path(tmp.name).replace(dest)


def read_split(path: Path) -> Split:
    """Read one FarsTail file: tab-separated with standard CSV quoting (quoted fields may hold
    tabs, quotes and newlines), so csv's default quoting, not a split on tabs. Every row is
    checked; an error names the file and line."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        cols = reader.fieldnames or []
        missing = [c for c in ("premise", "hypothesis", "label") if c not in cols]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(cols) or 'none'})")
        hard_cols = [c for c in HARD_COLUMNS if c in cols]
        split = Split([], [], [], {HARD_COLUMNS[c]: [] for c in hard_cols})
        for row in reader:
            line = reader.line_num
            label = (row["label"] or "").strip()
            if label not in CODES:
                raise UserError(f"{path}, line {line}: unknown label {label!r} (expected one of {', '.join(CODES)})")
            for col in ("premise", "hypothesis"):
                if not (row[col] or "").strip():
                    raise UserError(f"{path}, line {line}: empty {col}")
            split.premise.append(row["premise"].strip())
            split.hypothesis.append(row["hypothesis"].strip())
            split.label.append(CODES.index(label))
            for c in hard_cols:
                value = (row[c] or "").strip()
                if value not in ("0", "1"):
                    raise UserError(f"{path}, line {line}: column {c} must be 0 or 1, got {value!r}")
                split.hard[HARD_COLUMNS[c]].append(int(value))
    if not split.label:
        raise UserError(f"{path}: no rows")
    return split


def load_farstail(data_dir: Path, limit: int | None = None, log=print) -> dict[str, Split]:
    """The three splits, downloading any missing file first; `limit` keeps the first N rows of each."""
    if any(not (data_dir / n).exists() for n in FILES.values()):
        download_farstail(data_dir, log)
    return {k: read_split(data_dir / name).head(limit) for k, name in FILES.items()}


@dataclass
class Encoded:
    """One tokenised split: each pair's ids and segment ids, and its label."""
    input_ids: list[torch.Tensor]
    token_type_ids: list[torch.Tensor]
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def encode(tokenizer, split: Split, max_length: int) -> Encoded:
    """Tokenise premise and hypothesis together ([CLS] p [SEP] h [SEP]), truncated to max_length, once."""
    enc = tokenizer(split.premise, split.hypothesis, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return Encoded([torch.tensor(x) for x in enc["input_ids"]], [torch.tensor(x) for x in types],
                   torch.tensor(split.label))


def collate(data: Encoded, idx: list[int], pad_id: int, device: torch.device, sdpa_mask: bool = False) -> dict:
    """Pad the pairs in idx to the longest among them (not to --max-length) and move to device.

    The attention mask is decided here, on the host, so the model never has to inspect it on the
    device (transformers' `mask.all()` check is a GPU-to-host sync every forward): a batch without
    padding gets no mask (SDPA may then take its fastest kernel); with padding and `sdpa_mask`
    (the model uses SDPA), a ready 4D boolean mask (batch, 1, 1, length), which transformers passes
    through as-is; otherwise the usual 2D mask."""
    ids = torch.nn.utils.rnn.pad_sequence([data.input_ids[i] for i in idx], batch_first=True, padding_value=pad_id)
    types = torch.nn.utils.rnn.pad_sequence([data.token_type_ids[i] for i in idx], batch_first=True)
    lengths = torch.tensor([len(data.input_ids[i]) for i in idx])
    batch = {"input_ids": ids, "token_type_ids": types, "labels": data.labels[idx]}
    if lengths.min() < ids.shape[1]:
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        batch["attention_mask"] = mask[:, None, None, :] if sdpa_mask else mask.long()
    return to_device(batch, device)


def token_stats(tokenizer, split: Split, max_length: int) -> tuple[dict, dict]:
    """As the study reported: the longest premise and hypothesis in word pieces (special tokens
    not counted), and how many pairs max_length truncates. Returns (stats, per-pair lengths)."""
    p = [len(x) for x in tokenizer(split.premise, add_special_tokens=False)["input_ids"]]
    h = [len(x) for x in tokenizer(split.hypothesis, add_special_tokens=False)["input_ids"]]
    extra = tokenizer.num_special_tokens_to_add(pair=True)
    truncated = sum(a + b + extra > max_length for a, b in zip(p, h))
    return ({"max_premise_tokens": max(p), "max_hypothesis_tokens": max(h), "truncated_pairs": int(truncated)},
            {"premise": p, "hypothesis": h})
