"""Tokens/s of Keel's `local` provider against llama-cpp-python called directly.

Both sides load the same GGUF with the same settings and get the same prompts, seed and
sampling parameters; runs alternate (raw, Keel chat, Keel stream, then the next order) so a
busy machine hurts both alike. Every prompt opens with its own system message, so llama-cpp-
python's prompt-prefix cache (which Keel does not use, for reproducibility) saves it almost
nothing. Prints a table and writes bench/results/local_engine.json. Target: within 5%.

    python bench/local_engine.py [--rounds 3] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from keel.providers.local import LocalEngineOptions, LocalProvider
from keel.providers.local.model import resolve_model_path

PROMPTS = [
    ("You are a travel writer.", "Describe a walk through Lisbon."),
    ("You are a science teacher.", "Explain why the sky is blue."),
    ("You are a chef.", "Give me a recipe for pancakes."),
    ("You are a historian.", "Tell me about the Roman roads."),
    ("You are a coach.", "How should a beginner train for a 10 km run?"),
]
RESULTS = Path(__file__).parent / "results" / "local_engine.json"


def messages(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def run_raw(llm, opts: LocalEngineOptions, msgs, seed: int, max_tokens: int, temperature: float):
    started = time.perf_counter()
    out = llm.create_chat_completion(
        msgs,
        max_tokens=max_tokens,
        seed=seed,
        temperature=temperature,
        top_p=opts.top_p,
        top_k=opts.top_k,
        min_p=opts.min_p,
        repeat_penalty=opts.repeat_penalty,
    )
    return out["usage"]["completion_tokens"], time.perf_counter() - started, out["choices"][0]["message"]["content"]


async def run_keel(provider, body: dict):
    started = time.perf_counter()
    out = await provider.chat(body, "smollm2")
    return out["usage"]["completion_tokens"], time.perf_counter() - started, out["choices"][0]["message"]["content"]


async def run_keel_stream(provider, body: dict):
    started = time.perf_counter()
    tokens, parts = 0, []
    async for chunk in provider.stream(body, "smollm2"):
        if chunk["choices"]:
            parts.append(chunk["choices"][0]["delta"].get("content") or "")
        else:
            tokens = chunk["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - started, "".join(parts)


async def main(rounds: int, max_tokens: int, temperature: float) -> dict:
    import llama_cpp

    opts = LocalEngineOptions()
    provider = LocalProvider("local", opts)
    await provider.start()
    llm = llama_cpp.Llama(
        model_path=str(resolve_model_path(opts.model_path)),
        n_ctx=opts.n_ctx,
        n_batch=opts.n_batch,
        n_threads=opts.n_threads,
        verbose=False,
    )
    sides = ("raw", "keel", "keel_stream")
    totals = [{side: [0, 0.0] for side in sides} for _ in PROMPTS]
    texts: list[dict] = [{} for _ in PROMPTS]
    # Rounds outside, prompts inside: consecutive raw calls never share a whole prompt, which
    # would let llama-cpp-python skip evaluating it (a server rarely sees one prompt twice).
    for r in range(rounds):
        order = sides if r % 2 == 0 else tuple(reversed(sides))
        for index, (system, user) in enumerate(PROMPTS):
            seed = 1000 + index
            msgs = messages(system, user)
            body = {"messages": msgs, "max_tokens": max_tokens, "seed": seed, "temperature": temperature}
            for side in order:
                if side == "raw":
                    tokens, seconds, text = run_raw(llm, opts, msgs, seed, max_tokens, temperature)
                elif side == "keel":
                    tokens, seconds, text = await run_keel(provider, body)
                else:
                    tokens, seconds, text = await run_keel_stream(provider, body)
                totals[index][side][0] += tokens
                totals[index][side][1] += seconds
                texts[index].setdefault(side, set()).add(text)
    rows = [
        {
            "prompt": user,
            "tokens": totals[i]["raw"][0] // rounds,
            **{f"{side}_tps": totals[i][side][0] / totals[i][side][1] for side in sides},
            # Keel must give one text per prompt (same seed); raw may vary with its prefix cache.
            "keel_reproducible": len(texts[i]["keel"] | texts[i]["keel_stream"]) == 1,
            "same_text": len(texts[i]["raw"] | texts[i]["keel"] | texts[i]["keel_stream"]) == 1,
        }
        for i, (_, user) in enumerate(PROMPTS)
    ]
    await provider.aclose()
    llm.close()

    def overall(side):
        return sum(r[f"{side}_tps"] for r in rows) / len(rows)

    summary = {side: overall(side) for side in sides}
    return {
        "settings": {
            "rounds": rounds,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "n_ctx": opts.n_ctx,
            "llama_cpp_python": llama_cpp.__version__,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus",
        },
        "prompts": rows,
        "mean_tokens_per_s": summary,
        "keel_vs_raw": summary["keel"] / summary["raw"] - 1,
        "keel_stream_vs_raw": summary["keel_stream"] / summary["raw"] - 1,
    }


def show(result: dict) -> None:
    table = Table(title="local engine: tokens/s, llama-cpp-python direct vs Keel provider")
    for name in ("prompt", "tokens", "raw", "keel chat", "keel stream", "keel/raw", "keel same", "= raw"):
        table.add_column(name, justify="left" if name == "prompt" else "right")
    for row in result["prompts"]:
        table.add_row(
            row["prompt"][:34],
            str(row["tokens"]),
            f"{row['raw_tps']:.1f}",
            f"{row['keel_tps']:.1f}",
            f"{row['keel_stream_tps']:.1f}",
            f"{row['keel_tps'] / row['raw_tps'] - 1:+.1%}",
            "yes" if row["keel_reproducible"] else "no",
            "yes" if row["same_text"] else "no",
        )
    mean = result["mean_tokens_per_s"]
    table.add_row(
        "mean", "", f"{mean['raw']:.1f}", f"{mean['keel']:.1f}", f"{mean['keel_stream']:.1f}",
        f"{result['keel_vs_raw']:+.1%}", "", "",
    )
    console = Console(width=120)
    console.print(table)
    console.print(f"stream vs raw: {result['keel_stream_vs_raw']:+.1%} (target: within 5%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds, args.max_tokens, args.temperature))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    show(result)
