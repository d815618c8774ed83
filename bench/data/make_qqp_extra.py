"""Build qqp-pairs-train-extra.jsonl.gz: the Quora pairs of GPTCache's benchmark file that are
not in qqp-pairs-dev.jsonl, for training the cache verifier only.

    python bench/data/make_qqp_extra.py /path/to/similiar_qqp_full.json

The source is GPTCache's `examples/benchmark/similiar_qqp_full.json` (zilliztech/GPTCache, MIT;
gunzip the .json.gz), a JSON list of {"text_a", "text_b", "label"}. Kept: every pair not already
in the dev file (either order) that shares no question (exact string, a or b) with a validation
or test pair of the dev file (train_verifier.split_of), so that no held-out question is ever
trained on; repeats of a pair are kept once. Order: the source file's. Deterministic output
(gzip mtime 0).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keel.orchestration.cache.train_verifier import split_of

HERE = Path(__file__).parent
DEV = HERE / "qqp-pairs-dev.jsonl"
OUT = HERE / "qqp-pairs-train-extra.jsonl.gz"


def build(source: Path, dev: Path = DEV, out: Path = OUT) -> dict:
    rows = json.loads(source.read_text(encoding="utf-8"))
    dev_rows = [json.loads(line) for line in dev.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    dev_pairs = {(r["a"], r["b"]) for r in dev_rows} | {(r["b"], r["a"]) for r in dev_rows}
    held_out = {r[k] for r in dev_rows if split_of(r["a"], r["b"]) != "train" for k in "ab"}
    counts = {"source": len(rows), "in_dev": 0, "shares_held_out_question": 0, "repeat": 0}
    seen: set[tuple[str, str]] = set()
    kept = []
    for r in rows:
        a, b = r["text_a"], r["text_b"]
        if (a, b) in dev_pairs:
            counts["in_dev"] += 1
        elif a in held_out or b in held_out:
            counts["shares_held_out_question"] += 1
        elif (a, b) in seen or (b, a) in seen:
            counts["repeat"] += 1
        else:
            seen.add((a, b))
            kept.append({"a": a, "b": b, "duplicate": bool(r["label"])})
    counts["kept"] = len(kept)
    counts["kept_duplicates"] = sum(r["duplicate"] for r in kept)
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                              filename="") as f:
        for r in kept:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    return counts


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1])), indent=2))
