"""Distillation, offline, end to end: a grounded teacher taught to a plain student.

Teacher: the support bot of examples/support-bot (the embedded SmolLM2-135M with the FAQ
retrieved into the prompt: knowledge collection `support`, top_k 1, placement user).
Student: the same embedded SmolLM2 with no retrieval, fine-tuned on the teacher's answers on
this machine's CPU (`keel distill train --backend local`).

Every step is the real CLI, run as a user runs it, in a temporary work dir:

    keel ingest examples/support-bot/faq --collection support
    keel eval run teacher.yaml               # the teacher answers each training prompt N times
                                             # (greedy + sampled), graded by key-facts, plain
    keel distill dataset faq --from-traces --eval-run RUN --best-per-sample --min-grade 1 ...
                                             # the teacher's best answer to each prompt, when
                                             # it is right and plain
    keel distill train faq --backend local --base-model smollm2 -o epochs=N -o learning_rate=X
    keel distill evaluate --teacher support-bot --base smollm2 --student STUDENT.gguf \
        --suite heldout.yaml                           # teacher, base and student, held out
    keel eval compare RUN:base RUN:student

The teacher is right about a third of the time (a 135M model, even with the FAQ passage in
front of it), and a student taught its wrong answers learns them too. So the teacher pipeline is
best-of-N with a check: each training prompt (bench/data/distill/train-prompts.jsonl, with the
key facts a right answer holds) is answered greedily and N-1 times sampled, the eval run grades
every answer, and the training set keeps each prompt's best answer (the shortest of equals)
when it holds all the prompt's facts, speaks plainly (`plain`: no talk of "the sources", no [1]
markers, code or links, which a student without retrieval must not learn) and was not cut off
at max_tokens — Keel's "from traces, eval grade ≥ x" filter on that one run. Prompts the
teacher never gets right are left out. Teacher, base and student all get the application's
system prompt (SYSTEM below: answer in one or two short sentences).

The held-out questions (bench/data/distill/heldout.jsonl) are paraphrases that are NOT in the
training prompts (checked below), with the ideal answer taken from the FAQ text and the key
facts a right answer must contain. Two deterministic graders:

- `key-facts` (primary): the share of the sample's key facts found in the answer
  (case-insensitive; "a|b" accepts either). It measures "answers the FAQ correctly": the menu
  path, the number, the address. A fluent answer without the fact scores 0.
- `similarity`: cosine of the answer and the ideal FAQ answer with the embedded MiniLM — a
  softer "on topic and close to the FAQ" measure; generic support talk still scores ~0.5.

    python bench/distill.py [--epochs 8] [--learning-rate 1e-4] [--samples 8] [--keep DIR]
    python bench/distill.py --facts-only                      # filter on key-facts alone
    python bench/distill.py --system '' --cut-off trim        # no system prompt; trim cut-offs
    python bench/distill.py --keep DIR --reuse [--epochs 4]   # same teacher set, train again
    python bench/distill.py --keep DIR --teacher-run RUN      # same teacher answers, new set
    python bench/distill.py --keep DIR --reuse --job ID       # evaluate a finished job again

Writes bench/results/distill.json (or --out) and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "distill"
FAQ = ROOT / "examples" / "support-bot" / "faq"
EXAMPLE_CONFIG = ROOT / "examples" / "support-bot" / "keel.yaml"
# The application's system prompt: a support bot that answers briefly. Teacher, base and student
# all get it; the student learns the teacher's right answers in that style.
SYSTEM = "You are Acme's support assistant. Answer in one or two short sentences."


# -- the grader the eval runner imports (`python` grader, function "distill:key_facts") -------


def key_facts(sample, output) -> dict:
    """Share of metadata.facts found in the answer; a fact "a|b" is found when either is."""
    facts = sample.metadata.get("facts") or []
    if not facts:
        return {"score": 0.0, "passed": False, "label": "__no_facts__"}
    text = (output.text or "").lower()
    found = [f for f in facts if any(alt.strip().lower() in text for alt in f.split("|"))]
    score = len(found) / len(facts)
    return {"score": score, "passed": score >= 0.5, "details": {"found": found}}


_META_TALK = re.compile(r"\bsources?\b|\[\d+\]|```|https?://|\bchatbot\b|\bas an ai\b",
                        re.IGNORECASE)


def plain_answer(sample, output) -> dict:
    """1 when the answer speaks to the user plainly: no talk of "the sources", no citation
    markers, code fences, links or "as a chatbot" — what a student without retrieval should
    not learn to say (the grounded teacher's answers often do)."""
    text = output.text or ""
    found = _META_TALK.findall(text)
    return {"score": 0.0 if found else 1.0, "passed": not found,
            "details": {"found": sorted({f.lower() for f in found})}}


# -- helpers -----------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_no_overlap(train: list[dict], heldout: list[dict]) -> None:
    """No held-out question is a training question (normalised text), and ids are unique."""
    train_q = {_norm(t["input"]) for t in train}
    clash = [h["input"] for h in heldout if _norm(h["input"]) in train_q]
    if clash:
        raise SystemExit(f"held-out questions also in the training prompts: {clash}")
    for rows, what in ((train, "train"), (heldout, "held-out")):
        ids = [r["id"] for r in rows]
        if len(ids) != len(set(ids)):
            raise SystemExit(f"duplicate ids in the {what} prompts")
    if any(not h.get("ideal") or not h.get("metadata", {}).get("facts") for h in heldout):
        raise SystemExit("every held-out question needs an ideal and metadata.facts")


def nearest_train_cosines(train: list[dict], heldout: list[dict]) -> dict:
    """How close each held-out question comes to a training question (MiniLM cosine, the
    embedder `keel distill dataset --near-dup` uses); refuses any at or above 0.95, the
    near-duplicate default."""
    import numpy as np

    from keel.embeddings.heads import embed_all

    vectors = np.asarray(embed_all([r["input"] for r in train + heldout])[0])
    nearest = (vectors[len(train):] @ vectors[:len(train)].T).max(axis=1)
    if nearest.max() >= 0.95:
        worst = heldout[int(nearest.argmax())]["input"]
        raise SystemExit(f"held-out question {worst!r} is a near-duplicate of a training one "
                         f"(cosine {nearest.max():.3f})")
    return {"median": round(float(np.median(nearest)), 3),
            "max": round(float(nearest.max()), 3), "min": round(float(nearest.min()), 3)}


def keel(args: list[str], work: Path, log, *, capture=True) -> tuple[str, float]:
    """Run `keel ARGS` in the work dir; echo command and output to the log; (stdout, seconds)."""
    exe = Path(sys.executable).with_name("keel")
    cmd = [str(exe) if exe.exists() else "keel", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT / "bench"), os.environ.get("PYTHONPATH")])),
        COLUMNS="160", NO_COLOR="1")
    print(f"$ keel {' '.join(args)}", flush=True)
    log.write(f"$ keel {' '.join(args)}\n")
    started = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=work, env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - started
    log.write(proc.stdout + proc.stderr + f"[{seconds:.1f} s, exit {proc.returncode}]\n\n")
    log.flush()
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"keel {args[0]} {args[1] if len(args) > 1 else ''} failed "
                         f"(exit {proc.returncode})")
    return proc.stdout, seconds


def write_config(work: Path) -> None:
    """The example's keel.yaml (teacher `support-bot`), plus the plain student `smollm2`:
    the same provider, model and defaults, no knowledge layer."""
    import yaml

    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    teacher = raw["models"]["support-bot"]
    raw["models"] = {
        "support-bot": teacher,
        "smollm2": {"provider": teacher["provider"], "model": teacher["model"],
                    "defaults": dict(teacher.get("defaults") or {})},
    }
    (work / "keel.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def teacher_variant(temperature: float, seed: int, max_tokens: int,
                    system: str | None = None) -> dict:
    """A variant of the teacher route; `system`, the application's system prompt, goes into
    the training examples and the held-out eval alike."""
    variant: dict = {"model": "support-bot", "params": {
        "temperature": temperature, "seed": seed, "max_tokens": max_tokens}}
    if system:
        variant["prompt"] = {"system": system}
    return variant


def write_suite_file(path: Path, name: str, description: str, dataset: str, variants: dict,
                     graders: list[dict]) -> None:
    import yaml

    suite = {"name": name, "description": description, "dataset": dataset,
             "config": "keel.yaml", "variants": variants, "graders": graders,
             "judge": {"model": "smollm2"}, "concurrency": 1}
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def write_suite(work: Path, max_tokens: int, system: str | None = None) -> None:
    """The held-out eval: `keel distill evaluate` swaps its one variant's model for teacher,
    base and student, keeping its prompt and params."""
    write_suite_file(
        work / "heldout.yaml", "distill-faq-heldout",
        "Held-out paraphrases of the Acme FAQ, ideal answers from the FAQ text",
        "heldout.jsonl", {"answer": teacher_variant(0, 7, max_tokens, system)},
        [{"kind": "python", "name": "key-facts", "function": "distill:key_facts"},
         {"kind": "similarity", "name": "similarity", "threshold": 0.8}])


def write_teacher_suite(work: Path, samples: int, max_tokens: int,
                        system: str | None = None) -> None:
    """The teacher over the training prompts: one greedy answer and samples-1 sampled ones
    (temperature 0.8, a seed each), every answer graded by key-facts and plain."""
    variants = {"greedy": teacher_variant(0, 7, max_tokens, system)}
    for seed in range(1, samples):
        variants[f"sample{seed}"] = teacher_variant(0.8, seed, max_tokens, system)
    write_suite_file(
        work / "teacher.yaml", "distill-faq-teacher",
        "The grounded teacher over the training prompts, best of N", "train-prompts.jsonl",
        variants,
        [{"kind": "python", "name": "key-facts", "function": "distill:key_facts"},
         {"kind": "python", "name": "plain", "function": "distill:plain_answer"}])


def epoch_losses(job: dict) -> list[float]:
    """The mean training loss of each epoch, from the job's "epoch N: training loss X" events."""
    found = []
    for event in job.get("events", []):
        match = re.match(r"epoch \d+: training loss ([0-9.]+)", event.get("message") or "")
        if match:
            found.append(float(match.group(1)))
    return found


def p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=150,
                        help="answer length in the held-out eval (the teacher's default)")
    parser.add_argument("--samples", type=int, default=8,
                        help="teacher answers per training prompt (1 greedy, the rest sampled)")
    parser.add_argument("--teacher-max-tokens", type=int, default=100,
                        help="answer length of the teacher's training answers")
    parser.add_argument("--min-grade", type=float, default=1.0,
                        help="keep teacher answers graded at least this")
    parser.add_argument("--cut-off", choices=("drop", "trim", "keep"), default="drop",
                        help="teacher answers max_tokens cut off: leave them out (default), "
                        "keep them up to their last complete sentence, or keep them whole")
    parser.add_argument("--facts-only", action="store_true",
                        help="filter the teacher's answers on key-facts alone (default: the "
                        "mean of key-facts and plain, so a right answer that talks about its "
                        "sources is left out too)")
    parser.add_argument("--keep", metavar="DIR", help="work here and keep it (default: a "
                        "temporary dir, removed at the end)")
    parser.add_argument("--reuse", action="store_true", help="with --keep DIR of an earlier "
                        "run: keep its ingest and teacher set, train and evaluate again")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill.json"))
    parser.add_argument("--job", help="with --reuse: evaluate this finished job, no training")
    parser.add_argument("--system", metavar="TEXT", default=SYSTEM, help="the system prompt "
                        "the application sends: the teacher's answers and the held-out eval "
                        "(all three models) get it; '' for none (default: %(default)r)")
    parser.add_argument("--teacher-run", metavar="RUN", help="with --keep DIR of an earlier "
                        "run: build the set again from that run's graded teacher answers "
                        "(no new teacher run), then train and evaluate")
    parser.add_argument("--label", default="", help="a note stored with the results")
    args = parser.parse_args()

    train = load_jsonl(DATA / "train-prompts.jsonl")
    heldout = load_jsonl(DATA / "heldout.jsonl")
    check_no_overlap(train, heldout)
    closeness = nearest_train_cosines(train, heldout)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="keel-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("train-prompts.jsonl", "heldout.jsonl"):
        shutil.copy(DATA / name, work / name)
    write_config(work)
    write_suite(work, args.max_tokens, args.system)
    write_teacher_suite(work, args.samples, args.teacher_max_tokens, args.system)
    log = open(work / "commands.log", "a" if args.reuse or args.teacher_run else "w")  # noqa: SIM115
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        if args.reuse:
            if not args.keep:
                raise SystemExit("--reuse needs --keep DIR (an earlier run's work dir)")
            sets = json.loads(keel(["distill", "list", "--json", "--config", "keel.yaml"],
                                   work, log)[0])
            dataset = sets[0] if isinstance(sets, list) else sets
        else:
            if args.teacher_run:
                if not args.keep:
                    raise SystemExit("--teacher-run needs --keep DIR (that run's work dir)")
                teacher_run = {"run_id": args.teacher_run}
            else:
                _, timings["ingest_s"] = keel(
                    ["ingest", str(FAQ), "--collection", "support", "--config", "keel.yaml"],
                    work, log)
                out, timings["teacher_s"] = keel(
                    ["eval", "run", "teacher.yaml", "--no-progress", "--config", "keel.yaml",
                     "--json"], work, log)
                teacher_run = json.loads(out)
            # One answer a prompt: the best graded of the run's N, the shortest of equals. An
            # answer max_tokens cut off is left out: taught, it teaches the student to run on
            # to its own limit.
            out, timings["dataset_s"] = keel(
                ["distill", "dataset", "faq", "--from-traces", "--eval-run",
                 teacher_run["run_id"], "--best-per-sample", "--min-grade", str(args.min_grade),
                 "--cut-off", args.cut_off,
                 *(["--grader", "key-facts"] if args.facts_only else []),
                 "--near-dup", "off", "--pii", "off", "--split", "100/0/0",
                 "--out", "set", "--config", "keel.yaml", "--json"], work, log)
            dataset = json.loads(out)
            dataset["teacher_run"] = teacher_run["run_id"]
            dataset["teacher_graders"] = teacher_run.get("summary")

        if args.job:
            timings["train_s"] = 0.0
        else:
            _, timings["train_s"] = keel(
                ["distill", "train", "faq", "--backend", "local", "--base-model", "smollm2",
                 "--register", "faq-student", "-o", f"epochs={args.epochs}",
                 "-o", f"learning_rate={args.learning_rate}", "-o", f"context={args.context}",
                 "--config", "keel.yaml"], work, log)
        jobs = json.loads(keel(["distill", "jobs", "--json", "--config", "keel.yaml"],
                               work, log)[0])
        job = next(j for j in jobs if not args.job or j["id"].startswith(args.job))
        job = json.loads(keel(["distill", "job", job["id"], "--json", "--config", "keel.yaml"],
                              work, log)[0])
        losses = [e.get("data", {}).get("train_loss") for e in job.get("events", [])
                  if e.get("type") == "metrics" and e.get("data", {}).get("train_loss")
                  is not None]

        out, timings["evaluate_s"] = keel(
            # The student and base by name, not by job: `keel distill evaluate JOB` wants the
            # job's set to have a non-empty test split even when --suite brings the dataset
            # (keel/distill/evaluate.py plan_for), and this set is all train.
            ["distill", "evaluate", "--teacher", "support-bot", "--base", "smollm2",
             "--student", job["result_model"], "--suite", "heldout.yaml", "--no-progress",
             "--config", "keel.yaml", "--json"], work, log)
        report = json.loads(out)
        run_id = report["run_id"]
        compare, _ = keel(["eval", "compare", f"{run_id}:base", f"{run_id}:student",
                           "--config", "keel.yaml"], work, log)
        compare_json = json.loads(keel(["eval", "compare", f"{run_id}:base",
                                        f"{run_id}:student", "--config", "keel.yaml",
                                        "--json"], work, log)[0])
        timings["total_s"] = time.perf_counter() - started
    finally:
        log.close()

    # the job's own clock (queued to finished), so a --reuse --job run reports it too
    train_s = (job["finished_at"] - job["created_at"]) if job.get("finished_at") else 0.0
    timings["train_s"] = train_s
    results = {
        "benchmark": "bench/distill.py",
        "label": args.label,
        "machine": f"{os.cpu_count()} cores (shared), nice",
        "teacher": "support-bot (embedded SmolLM2-135M + FAQ retrieval, top_k 1, placement user)",
        "student": "smollm2 (embedded SmolLM2-135M, no retrieval), fine-tuned locally",
        "train_prompts": len(train),
        "heldout": len(heldout),
        "heldout_nearest_train_cosine": closeness,
        "dataset": {k: dataset.get(k) for k in ("splits", "stats", "id", "name", "teacher_run",
                                                "teacher_graders") if k in dataset},
        "teacher_samples": args.samples,
        "filter": "key-facts" if args.facts_only else "key-facts and plain",
        "cut_off": args.cut_off,
        "system": args.system or None,
        "teacher_max_tokens": args.teacher_max_tokens,
        "training": {**(job.get("options") or {}).get("backend_options", {}),
                     "job_id": job["id"],
                     "status": job.get("status"), "result_model": job.get("result_model"),
                     "step_loss_first": losses[0] if losses else None,
                     "step_loss_last": losses[-1] if losses else None,
                     "epoch_losses": epoch_losses(job),
                     "seconds": round(train_s, 1)},
        "eval_run": run_id,
        "graders": report["graders"],
        "variants": report["variants"],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "compare_base_student": compare_json,
        "compare_base_student_text": compare,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")

    print()
    t = results["training"]
    print(f"training: {len(train)} prompts -> {t.get('epochs')} epochs at lr "
          f"{t.get('learning_rate')}, {train_s:.0f} s; loss per epoch {t['epoch_losses']}")
    for grader, g in report["graders"].items():
        def fmt(x):
            return (f"{x['mean']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"
                    if x and x.get("ci") else str(x and x.get("mean")))
        print(f"{grader:11s} n={g['n']}  teacher {fmt(g['teacher'])}  base {fmt(g['base'])}  "
              f"student {fmt(g['student'])}  retained {g['retained']}  "
              f"(base retained {g['base_retained']})")
    for variant, v in report["variants"].items():
        print(f"{variant:8s} p50 latency {v.get('latency_p50_ms')} ms")
    print(compare)
    print(f"total {timings['total_s']:.0f} s; results in {args.out}; work dir {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
