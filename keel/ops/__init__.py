"""LLMOps: who may ask and how much, what happened, and for how long it is kept.

- Traces: `traces.TraceRecorder` writes every request's `Trace` to the store off the request
  path (batched, bounded, flushed on shutdown; what it has to drop is counted and reported);
  `trace_queries` reads them back for `keel traces list` / `show`; `privacy` reduces them when
  bodies are not recorded; `retention` prunes old ones in the background.
- Keys: `keys.KeyStore` (virtual keys, hashed secrets), `key_cache.KeyCache` (a key's
  `principal.Principal` in a dictionary after its first use, dropped when any key changes).
- Limits: `limits.Limiter` checks rate limits and budgets before a model call and settles them
  after it, on the shared state (`keel.state`: memory or Redis); `usage` rolls spend and tokens
  up per day, key, team and model with each trace batch.
- Observability: `metrics` (Prometheus), `otel` (OpenTelemetry spans over OTLP/HTTP).
- `feedback`: people's scores and corrections on traces.

Each of these sees a finished trace through `Gateway.record`, never the request path itself.
"""
