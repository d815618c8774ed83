"""The semantic cache's verifier: shipped weights, near-misses, vetoes, held-out precision, and
the training script end to end (on a tiny set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from keel.embeddings.local import LocalEmbedder, LocalOptions
from keel.errors import ConfigError
from keel.orchestration.cache import train_verifier as tv
from keel.orchestration.cache.verifier import WEIGHTS, Verifier, load_verifier, veto

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests/data/cache/qqp-sample.jsonl"


@pytest.fixture(scope="module")
def embed():
    """Texts -> unit vectors with the embedded MiniLM (the embedder the weights expect)."""
    import asyncio

    loop = asyncio.new_event_loop()
    embedder = LocalEmbedder("minilm", LocalOptions())
    loop.run_until_complete(embedder.start())

    def run(texts: list[str]) -> np.ndarray:
        return loop.run_until_complete(embedder.embed(texts)).vectors

    run.fingerprint = embedder.fingerprint
    yield run
    loop.run_until_complete(embedder.aclose())
    loop.close()


def judge(verifier: Verifier, embed, query: str, cached: str) -> tuple[bool, float]:
    u, v = embed([query, cached])
    return verifier.accept(query, cached, float(u @ v), query_vector=u, cached_vector=v)


def test_shipped_weights_load_and_match_the_embedded_minilm(embed):
    verifier = load_verifier()
    assert WEIGHTS.is_file()
    assert 0.5 <= verifier.threshold < 1 and 0 < verifier.candidate_threshold < 1
    verifier.check_embedder(embed.fingerprint)  # the embedder the weights were trained on
    with pytest.raises(ConfigError, match="retrain"):
        verifier.check_embedder("openai:text-embedding-3-small")
    assert verifier.meta["splits"]["test"] > 0 and verifier.meta["model"]


def test_unreadable_weights_are_a_config_error(tmp_path):
    bad = tmp_path / "verifier.npz"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(ConfigError, match="cannot read weights"):
        load_verifier(bad)


@pytest.mark.parametrize(
    "query, cached",
    [
        ("How do I reset my password?", "How can I reset my password?"),
        ("How do I cancel my subscription?", "How can I cancel my subscription?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("What is the capital of France?", "what is the capital of  france?"),  # identical
    ],
)
def test_paraphrases_are_accepted(embed, query, cached):
    accepted, score = judge(load_verifier(), embed, query, cached)
    assert accepted, score


def test_the_talks_paraphrase_scores_far_above_the_near_miss(embed):
    # "When was GPT-4 released?" / "GPT-4 release date?" scores ~0.68, just under the shipped
    # threshold (0.71; Quora's labels make the verifier strict); the near-miss's model score is
    # ~0.08 (its cosine, 0.66, is below the candidate cosine anyway).
    verifier = load_verifier()
    _, paraphrase = judge(verifier, embed, "When was GPT-4 released?", "GPT-4 release date?")
    accepted, _ = judge(verifier, embed, "How do I delete my account?", "How do I delete my post?")
    u, v = embed(["How do I delete my account?", "How do I delete my post?"])
    near_miss = verifier.score("How do I delete my account?", "How do I delete my post?",
                               float(u @ v))
    assert not accepted
    assert paraphrase >= 0.6 and near_miss <= 0.3


@pytest.mark.parametrize(
    "query, cached, reason",
    [
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
        ("Why can't I sleep at night?", "Why can I sleep at night?", "negation"),
        ("Is there nothing to do in Paris?", "Is there something to do in Paris?", "negation"),
        ("Why don’t cats like water?", "Why do cats like water?", "negation"),
        ("What was the population of India in 2010?",
         "What was the population of India in 2020?", "numbers"),
        ("How do I delete my account?", "How do I delete my post?", None),
        ("How do I learn Python?", "How do I learn Java?", None),
    ],
)
def test_near_misses_are_rejected(embed, query, cached, reason):
    assert veto(query, cached) == reason
    accepted, score = judge(load_verifier(), embed, query, cached)
    assert not accepted, score


def test_below_the_candidate_cosine_nothing_is_verified():
    verifier = load_verifier()
    sim = verifier.candidate_threshold - 0.01
    assert verifier.accept("How do I reset my password?", "How can I reset my password?",
                           sim) == (False, 0.0)


def test_precision_on_the_held_out_sample(embed):
    # 300 pairs of the TEST split (never trained on). Measured: precision 0.87 at recall 0.40
    # (53 hits); cosine alone ≥ 0.9 gives 0.81 at 0.40. The bounds leave room for noise.
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    assert len(rows) == 300 and {tv.split_of(r["a"], r["b"]) for r in rows} == {"test"}
    texts = sorted({r[k] for r in rows for k in ("a", "b")})
    vectors = dict(zip(texts, embed(texts)))
    verifier = load_verifier()
    pairs = tv.PairSet(rows, vectors, verifier.idf)
    hit = tv.hits(pairs, verifier.scores(pairs.inputs(verifier.uses_vectors)),
                  verifier.candidate_threshold, verifier.threshold)
    precision, recall = tv.pr(pairs.y, hit)
    assert precision >= 0.80 and recall >= 0.32, (precision, recall, int(hit.sum()))
    # And the model's scores agree with the text path the cache uses.
    row = rows[0]
    _, score = verifier.accept(row["a"] + " x", row["b"], 0.99,
                               query_vector=vectors[row["a"]], cached_vector=vectors[row["b"]])
    assert 0.0 <= score <= 1.0


def test_training_runs_end_to_end_on_a_tiny_set(tmp_path):
    lines = (ROOT / "bench/data/qqp-pairs-dev.jsonl").read_text().splitlines()[:150]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    out, report, sample = tmp_path / "v.npz", tmp_path / "r.json", tmp_path / "s.jsonl"
    assert tv.main(["--pairs", str(pairs), "--out", str(out), "--report", str(report),
                    "--cache", str(tmp_path / "emb.npz"), "--sample", str(sample)]) == 0
    trained = load_verifier(out)
    meta = json.loads(report.read_text())
    assert meta["splits"] == {"train": 95, "validation": 26, "test": 29}
    assert trained.threshold == meta["threshold"] and trained.fingerprint == meta["fingerprint"]
    assert len(sample.read_text().splitlines()) == 29
    assert (tmp_path / "emb.npz").is_file()
    # The trained model scores a pair (numpy only).
    assert 0.0 <= trained.score("How do I reset my password?", "How can I reset it?", 0.8) <= 1


def test_the_shipped_weights_carry_the_idf_table_of_their_training_questions(tmp_path):
    verifier = load_verifier()
    assert verifier.idf is not None and verifier.meta["features"][-4:] == list(tv.IDF_FEATURES)
    table, default = verifier.idf
    # A rare word weighs more than a common one; an unknown word gets the default (the rarest).
    assert table["python"] > table["learn"] and default >= max(table.values())
    # Saved and read back, the model scores the same.
    verifier.save(tmp_path / "v.npz")
    again = load_verifier(tmp_path / "v.npz")
    pair = ("How do I learn Kubernetes?", "How can I learn Kubernetes fast?", 0.9)
    assert again.score(*pair) == pytest.approx(verifier.score(*pair), abs=1e-6)
    assert verifier.text_features(*pair).shape == (verifier.text_feature_count,)


def test_extra_training_pairs_never_share_a_question_with_held_out_pairs(tmp_path):
    import gzip

    lines = (ROOT / "bench/data/qqp-pairs-dev.jsonl").read_text().splitlines()[:150]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    splits = tv.load_pairs(pairs)
    held = splits["test"][0]["a"]
    train_q = splits["train"][0]["a"]
    extra = [
        {"a": held, "b": "Something new?", "duplicate": True},  # shares a test question
        {"a": "Brand new question?", "b": "A fresh question?", "duplicate": False},
        {"a": "A fresh question?", "b": "Brand new question?", "duplicate": False},  # repeat
        {"a": train_q, "b": "Another one?", "duplicate": True},  # train questions are fine
    ]
    path = tmp_path / "extra.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    before = len(splits["train"])
    assert tv.add_extra(splits, path) == 2
    assert splits["train"][before:] == [extra[1], extra[3]]
    held_out = {r[k] for s in ("validation", "test") for r in splits[s] for k in "ab"}
    assert not {r[k] for r in splits["train"] for k in "ab"} & held_out


def test_the_committed_extra_pairs_file_is_leak_free():
    extra = ROOT / "bench/data/qqp-pairs-train-extra.jsonl.gz"
    splits = tv.load_pairs(ROOT / "bench/data/qqp-pairs-dev.jsonl")
    held_out = {r[k] for s in ("validation", "test") for r in splits[s] for k in "ab"}
    rows = tv.read_pairs(extra)
    assert len(rows) == 67_379 and sum(r["duplicate"] for r in rows) == 23_878
    assert not {r[k] for r in rows for k in "ab"} & held_out
