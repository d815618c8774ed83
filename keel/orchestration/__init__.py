"""Orchestration: manage latency and cost once traffic grows (the talk's fourth layer).

- `cache/`: the `cache` layer — exact and semantic answers reused, with a verifier that refuses
  near-misses ("delete my account" is not "delete my post"), entries in the store.
- `router/`: the `router` layer — one public model served by several deployments, with load
  balancing, retries, fallbacks and a circuit breaker, and learned cost-aware routing between a
  strong and a cheap model.
"""
