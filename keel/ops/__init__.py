"""LLMOps: traces, metrics, keys, feedback.

`traces.TraceRecorder` writes every request's `Trace` to the store off the request path
(batched, bounded, flushed on shutdown; what it has to drop is counted and reported), and
`trace_queries` reads them back for `keel traces list` / `show` and the console.
"""
