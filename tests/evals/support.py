"""Builders the eval runner, registry and CLI tests share: a fake-provider keel.yaml, a small
dataset, a suite file. Everything runs in-process against `keel.providers.fake`."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml

FAKE_MODELS = {
    "echo": {"provider": "fake", "pricing": {"input": 1.0, "output": 2.0}},
    "fixed-paris": {"provider": "fake", "model": "fixed:Paris"},
    "fixed-millie": {"provider": "fake", "model": "fixed:millie bobby brown"},
    "slow": {"provider": "fake", "model": "slow-30"},
    "slower": {"provider": "fake", "model": "slow-150"},
    "flaky": {"provider": "fake", "model": "flaky"},
    "broken": {"provider": "fake", "model": "error-503"},
    "bad-request": {"provider": "fake", "model": "error-400"},
    "judge-c": {"provider": "fake", "model": "fixed:C"},
    "judge-d": {"provider": "fake", "model": "fixed:D"},
    # Echoes, with a context of 1,000 (whitespace) tokens, like a small local judge.
    "judge-small": {"provider": "fake", "model": "context-1000"},
}


def write_config(tmp_path: Path, db_url: str, tracing: bool = True) -> Path:
    config = {
        "state_dir": str(tmp_path / "state"),
        "store": {"url": db_url},
        "tracing": {"enabled": tracing},
        "providers": {"fake": {"kind": "fake", "slow_ms": 30}},
        "models": FAKE_MODELS,
        "pipeline": [],
    }
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_dataset(path: Path, n: int = 6) -> Path:
    """Samples s0..s{n-1}; even ones mention their ideal in the input (echo passes includes)."""
    lines = []
    for i in range(n):
        ideal = f"answer{i}"
        text = f"question {i} about {ideal}" if i % 2 == 0 else f"question {i}"
        lines.append(orjson.dumps({"id": f"s{i}", "input": text, "ideal": ideal}).decode())
    path.write_text("\n".join(lines) + "\n")
    return path


def write_suite(tmp_path: Path, config: Path, n: int = 6, name: str = "demo", **fields) -> Path:
    dataset = write_dataset(tmp_path / "data.jsonl", n)
    suite = {
        "name": name,
        "dataset": dataset.name,
        "config": str(config),
        "variants": {"base": {"model": "echo"}},
        "graders": [{"kind": "includes"}],
        "retry_backoff_s": 0.0,
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path
