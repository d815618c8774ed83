"""Learned cost-aware routing: predict, per request, whether the cheap model's answer is enough.

Training data are eval runs in which a strong and a cheap variant answered the same samples and
were graded. A sample's score for a variant is the mean over its graders (or the one grader
asked for) of the mean over repeats; a cell that ended in an error scored 0 already. The label
is "the cheap answer was good enough": cheap score >= strong score - margin. Features are the
MiniLM embedding of the sample's question (its last user message). The model is an
L2-regularised logistic regression (keel.embeddings.heads.fit_logistic).

At run time `LearnedRouter.choose(ctx)` embeds the request's last user message (or the whole
conversation) with the runtime's embedder and answers "cheap" when P(cheap good enough) >=
threshold, "strong" otherwise. The threshold is the one cost/quality knob: 0 sends everything to
the cheap model, 1 (almost) everything to the strong one.

Metrics are RouteLLM's (Ong et al., 2024), computed on held-out samples only:
- the curve: sort samples by P(cheap good) ascending; sending the k least likely to the strong
  model gives strong share k/n and quality = mean of the chosen model's scores;
- PGR (performance gap recovered) = (quality - cheap quality) / (strong quality - cheap quality);
- APGR = area under PGR against strong share over [0, 1] (trapezoids over all n+1 points);
- CPT(x%) = the smallest strong share whose PGR reaches x%.
Random routing has PGR = share in expectation, so APGR 0.5 and CPT(x%) = x%.

The model file is an .npz: weights, bias, the embedder fingerprint it was trained on (a file
for another embedder is refused: its vectors would mean nothing), the default threshold, the
held-out split and the ids of the samples it was trained on (evaluation skips them), and JSON
metadata (variants, runs, margin, counts).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.errors import ConfigError, InvalidRequest

FORMAT = "keel-learned-router/1"
DEFAULT_THRESHOLD = 0.5
DEFAULT_HOLDOUT = 0.3
CPT_LEVELS = (0.5, 0.8, 0.95)
STRONG, CHEAP = "strong", "cheap"


# -- the model file ----------------------------------------------------------------------------


@dataclass
class RouterModel:
    weights: np.ndarray  # (dim,) float32
    bias: float
    fingerprint: str  # of the embedder the features came from
    threshold: float = DEFAULT_THRESHOLD
    holdout: float = DEFAULT_HOLDOUT
    train_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """P(the cheap model's answer is good enough) for (n, dim) unit vectors."""
        from keel.embeddings.heads import sigmoid

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.weights.shape[0]:
            raise InvalidRequest(f"router model expects {self.weights.shape[0]}-dimensional "
                                 f"vectors, got shape {vectors.shape}")
        return sigmoid(vectors.astype(np.float64) @ self.weights + self.bias)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, format=np.array(FORMAT), weights=self.weights.astype(np.float32),
                     bias=np.array(self.bias), fingerprint=np.array(self.fingerprint),
                     threshold=np.array(self.threshold), holdout=np.array(self.holdout),
                     train_ids=np.array(self.train_ids, dtype=str),
                     metadata=np.array(json.dumps(self.metadata)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RouterModel:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"router model file {path} does not exist "
                              "(train one with `keel router train`)")
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["format"]) != FORMAT:
                    raise ConfigError(f"{path}: not a {FORMAT} file (format "
                                      f"{str(saved['format'])!r})")
                return cls(weights=saved["weights"].astype(np.float32),
                           bias=float(saved["bias"]), fingerprint=str(saved["fingerprint"]),
                           threshold=float(saved["threshold"]), holdout=float(saved["holdout"]),
                           train_ids=[str(s) for s in saved["train_ids"].tolist()],
                           metadata=json.loads(str(saved["metadata"])))
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: not a learned router model file ({exc})") from None


# -- training data from eval runs ------------------------------------------------------------


@dataclass
class Example:
    sample_id: str
    text: str
    strong: float
    cheap: float


def variant_scores(cells: list[dict], variant: str, grader: str | None = None) -> dict[str, float]:
    """sample id -> the variant's score: mean over graders (or `grader`) of mean over repeats."""
    per: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        if cell["variant"] != variant:
            continue
        for name, grade in (cell.get("grades") or {}).items():
            if grader is None or name == grader:
                per.setdefault(cell["sample_id"], {}).setdefault(name, []).append(
                    float(grade["score"]))
    return {sid: float(np.mean([np.mean(v) for v in by.values()])) for sid, by in per.items()}


def examples_from_runs(store, run_ids: list[str], strong: str, cheap: str,
                       grader: str | None = None) -> list[Example]:
    """The samples both variants answered and were graded on, across runs (a later run's
    sample with the same id replaces an earlier one's)."""
    from keel.evals import runs
    from keel.evals.suite import input_text

    found: dict[str, Example] = {}
    for run_id in run_ids:
        run = runs.get_run(store, run_id)
        cells = runs.results(store, run["id"])
        variants = sorted({c["variant"] for c in cells})
        for name in (strong, cheap):
            if name not in variants:
                raise InvalidRequest(f"run {run['id']} has no variant {name!r} (it has: "
                                     f"{', '.join(variants) or 'none'})")
        samples = runs.run_samples(store, run)
        s_scores = variant_scores(cells, strong, grader)
        c_scores = variant_scores(cells, cheap, grader)
        for sid in sorted(set(s_scores) & set(c_scores)):
            sample = samples.get(sid)
            if sample is None:
                continue  # the run's dataset is not in the store: no text to learn from
            found[sid] = Example(sid, input_text(sample), s_scores[sid], c_scores[sid])
    if not found:
        raise InvalidRequest(f"no sample was graded for both {strong!r} and {cheap!r} in the "
                             "given runs" + (f" (grader {grader!r})" if grader else ""))
    return list(found.values())


def resolve_runs(store, what: list[str]) -> list[str]:
    """Run ids from arguments that are run ids (or prefixes), suite names or suite files: a
    suite stands for all its finished runs."""
    from keel.evals import runs

    out: list[str] = []
    for item in what:
        suite = item
        path = Path(item)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            from keel.evals.suite import load_suite

            suite = load_suite(path).name
        found = [r["id"] for r in runs.list_runs(store, limit=1000, suite=suite)
                 if r["status"] == runs.FINISHED]
        if found:
            out.extend(reversed(found))  # oldest first: newer runs overwrite shared samples
            continue
        out.append(runs.get_run(store, item)["id"])
    return list(dict.fromkeys(out))


def split_of(sample_id: str, holdout: float = DEFAULT_HOLDOUT) -> str:
    """"test" or "train", stable, by a hash of the sample id."""
    bucket = int(hashlib.sha1(sample_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < holdout else "train"


def labels(examples: list[Example], margin: float = 0.0) -> np.ndarray:
    """1 where the cheap answer was good enough: cheap >= strong - margin."""
    return np.array([e.cheap >= e.strong - margin - 1e-9 for e in examples], dtype=np.float64)


Embed = Callable[[list[str]], tuple[np.ndarray, str]]


def default_embed(cache: Path | None = None) -> Embed:
    from keel.embeddings.heads import embed_all

    return lambda texts: embed_all(texts, cache=cache)


def train(examples: list[Example], *, margin: float = 0.0, l2: float = 1.0,
          threshold: float = DEFAULT_THRESHOLD, holdout: float = DEFAULT_HOLDOUT,
          embed: Embed | None = None, metadata: dict | None = None) -> RouterModel:
    """A router fitted on the examples outside the held-out split."""
    from keel.embeddings.heads import fit_logistic

    chosen = [e for e in examples if split_of(e.sample_id, holdout) == "train"]
    if len(chosen) < 2:
        raise InvalidRequest(f"only {len(chosen)} training samples after holding out "
                             f"{holdout:.0%} of {len(examples)}; more graded samples are needed")
    y = labels(chosen, margin)
    vectors, fingerprint = (embed or default_embed())([e.text for e in chosen])
    weights, bias = fit_logistic(vectors, y, l2=l2)
    meta = {"margin": margin, "l2": l2, "train_samples": len(chosen),
            "train_positive_share": float(y.mean()), "dim": int(vectors.shape[1]),
            **(metadata or {})}
    return RouterModel(weights, bias, fingerprint, threshold=threshold, holdout=holdout,
                       train_ids=[e.sample_id for e in chosen], metadata=meta)


def held_out(model: RouterModel, examples: list[Example]) -> list[Example]:
    """The examples a model may be evaluated on: in its test split and never trained on."""
    trained = set(model.train_ids)
    return [e for e in examples
            if e.sample_id not in trained and split_of(e.sample_id, model.holdout) == "test"]


# -- metrics ---------------------------------------------------------------------------------


@dataclass
class Curve:
    share: np.ndarray  # strong-call share at each of the n+1 points
    quality: np.ndarray
    pgr: np.ndarray
    thresholds: np.ndarray  # route cheap when P >= this to get that point
    strong_quality: float
    cheap_quality: float

    @property
    def apgr(self) -> float:
        return float(np.sum((self.pgr[1:] + self.pgr[:-1]) / 2 * np.diff(self.share)))

    def cpt(self, level: float) -> float | None:
        """The smallest strong share whose PGR reaches `level` (None: never)."""
        reached = np.flatnonzero(self.pgr >= level - 1e-9)
        return float(self.share[reached[0]]) if len(reached) else None

    def at_share(self, share: float) -> int:
        """Index of the curve point nearest a strong share."""
        return int(np.argmin(np.abs(self.share - share)))


def curve(p_cheap: np.ndarray, strong: np.ndarray, cheap: np.ndarray) -> Curve:
    """The routing curve when the samples least likely to be fine on the cheap model go to the
    strong one first. Ties in P keep input order (a stable sort)."""
    p_cheap, strong, cheap = (np.asarray(a, dtype=np.float64) for a in (p_cheap, strong, cheap))
    n = len(p_cheap)
    if n == 0:
        raise InvalidRequest("no held-out samples to evaluate on")
    order = np.argsort(p_cheap, kind="stable")
    gain = (strong - cheap)[order]
    quality = cheap.mean() + np.concatenate([[0.0], np.cumsum(gain)]) / n
    s_q, c_q = float(strong.mean()), float(cheap.mean())
    gap = s_q - c_q
    pgr = (quality - c_q) / gap if gap > 1e-12 else np.full(n + 1, np.nan)
    ps = p_cheap[order]
    # k strong calls: the k lowest P go strong, so cheap needs P >= ps[k] (1.0+ when k = n).
    thresholds = np.concatenate([ps, [np.nextafter(1.0, 2.0)]])
    return Curve(np.arange(n + 1) / n, quality, pgr, thresholds, s_q, c_q)


def oracle_scores(strong: np.ndarray, cheap: np.ndarray) -> np.ndarray:
    """A router that knows the grades: the larger the strong model's gain, the lower P(cheap)."""
    return -(np.asarray(strong, float) - np.asarray(cheap, float))


def summary(c: Curve) -> dict:
    return {"apgr": round(c.apgr, 4),
            "cpt": {f"{int(level * 100)}%": c.cpt(level) for level in CPT_LEVELS},
            "strong_quality": round(c.strong_quality, 4),
            "cheap_quality": round(c.cheap_quality, 4)}


def evaluate(model: RouterModel, examples: list[Example], embed: Embed | None = None,
             shares=tuple(i / 10 for i in range(11))) -> dict:
    """The curve on held-out examples with APGR and CPT, beside random and oracle routing."""
    test = held_out(model, examples)
    if not test:
        raise InvalidRequest(f"none of the {len(examples)} samples is held out from this "
                             "model's training; evaluate on runs with other samples")
    vectors, fingerprint = (embed or default_embed())([e.text for e in test])
    check_fingerprint(model, fingerprint, "the embedder used to evaluate")
    strong = np.array([e.strong for e in test])
    cheap = np.array([e.cheap for e in test])
    p = model.predict(vectors)
    learned = curve(p, strong, cheap)
    oracle = curve(oracle_scores(strong, cheap), strong, cheap)
    gap = learned.strong_quality - learned.cheap_quality
    rows = []
    for share in shares:
        i = learned.at_share(share)
        rows.append({"strong_share": round(float(learned.share[i]), 4),
                     "threshold": round(float(min(learned.thresholds[i], 1.0)), 4),
                     "quality": round(float(learned.quality[i]), 4),
                     "pgr": None if gap <= 1e-12 else round(float(learned.pgr[i]), 4),
                     "random_quality": round(learned.cheap_quality + learned.share[i] * gap, 4)})
    at_default = int(np.sum(p < model.threshold))
    return {
        "samples": len(test), "excluded_trained": len(examples) - len(test),
        "learned": summary(learned), "random": {"apgr": 0.5, "cpt": {
            f"{int(level * 100)}%": level for level in CPT_LEVELS}},
        "oracle": summary(oracle), "curve": rows,
        "default_threshold": {"threshold": model.threshold,
                              "strong_share": round(at_default / len(test), 4),
                              "quality": round(float(learned.quality[at_default]), 4)},
        "points": {"share": learned.share.tolist(), "quality": learned.quality.tolist(),
                   "pgr": None if gap <= 1e-12 else learned.pgr.tolist()},
    }


def check_fingerprint(model: RouterModel, fingerprint: str, what: str) -> None:
    if fingerprint != model.fingerprint:
        raise ConfigError(f"the router model was trained on embeddings {model.fingerprint!r} "
                          f"but {what} makes {fingerprint!r}; retrain it with "
                          "`keel router train` on this embedder")


# -- routing at run time ---------------------------------------------------------------------


class LearnedOptions(BaseModel):
    """`router: {learned: {...}}` in keel.yaml."""

    model_config = ConfigDict(extra="forbid")
    model_file: str = Field(description="the .npz `keel router train` wrote")
    strong: str = Field(STRONG, description="the deployment group that gets the hard requests")
    cheap: str = Field(CHEAP, description="the deployment group that gets the rest")
    threshold: float | None = Field(None, ge=0, le=1, description="route cheap when P(cheap "
                                    "good enough) >= threshold; default: the file's")
    embedder: str = Field("minilm", description="the embedder the model was trained on")
    text: Literal["last_user", "conversation"] = "last_user"


class LearnedRouter:
    """Per request: "cheap" when the cheap model's answer is predicted good enough."""

    def __init__(self, model: RouterModel, options: LearnedOptions, runtime) -> None:
        self.model = model
        self.options = options
        self.runtime = runtime
        self.threshold = model.threshold if options.threshold is None else options.threshold
        self._embedder = None

    @classmethod
    def from_options(cls, options: dict, runtime, base_dir: str | Path | None = None
                     ) -> LearnedRouter:
        try:
            parsed = LearnedOptions.model_validate(options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'learned'}: {e['msg']}"
                                 for e in exc.errors())
            raise ConfigError(f"router.learned: {problems}") from None
        path = Path(parsed.model_file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        return cls(RouterModel.load(path), parsed, runtime)

    @property
    def strong(self) -> str:
        return self.options.strong

    @property
    def cheap(self) -> str:
        return self.options.cheap

    async def start(self) -> None:
        """Load the embedder and refuse a model trained on another one (ConfigError)."""
        if self._embedder is not None:
            return
        embedder = await self.runtime.embedder(self.options.embedder)
        check_fingerprint(self.model, embedder.fingerprint,
                          f"embedder {self.options.embedder!r}")
        self._embedder = embedder

    async def aclose(self) -> None:
        self._embedder = None  # the runtime owns and closes the embedder

    async def probability(self, text: str) -> float:
        await self.start()
        vectors = (await self._embedder.embed([text])).vectors
        return float(self.model.predict(vectors)[0])

    async def choose(self, ctx) -> str:
        """"cheap" or "strong" for this request; P lands in ctx.state["router.p_cheap"]."""
        p = await self.probability(request_text(ctx.body, self.options.text))
        choice = CHEAP if p >= self.threshold else STRONG
        ctx.state["router.p_cheap"] = round(p, 4)
        ctx.state["router.choice"] = choice
        return choice


def request_text(body: dict, which: str = "last_user") -> str:
    from keel.messages import content_text, last_user_text

    messages = body.get("messages") or []
    if which == "last_user":
        text = last_user_text(messages)
        if text:
            return text
    return "\n".join(content_text(m.get("content")) for m in messages
                     if m.get("role") != "system" and m.get("content"))
