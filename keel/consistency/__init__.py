"""Model consistency: JSON mode and JSON-schema output that holds its promise.

On the embedded engine a grammar guarantees the shape (see `keel.providers.local`); on remote
providers the `json_mode` layer here validates the answer and asks the model to repair it.
Reproducibility (`seed`, `system_fingerprint`) is each provider's job.
"""
