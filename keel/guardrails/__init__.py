"""Guardrails: input and output guards between the app and the model (the talk's first layer).

A guard looks at text — each user message on the way in, the answer on the way out — and
returns a `Verdict`: pass, or an action with reasons and scores:

    block    refuse: OpenAI-shaped 400 `guardrail_blocked`, or a refusal answered as a normal
             completion with finish_reason "content_filter" (the guard's `refusal` option)
    redact   mask what was found and continue (`[EMAIL]`), or pseudonymise it reversibly
             (`<EMAIL_1>` before the model, the original put back in the answer)
    rewrite  replace the request by an acceptable one (a model rewrites it) and continue
    repair   ask the model again with the failure explained, up to `attempts` times
    flag     record only

The `guardrails` layer (`layer.py`) runs the configured guards in order (independent input
guards concurrently), applies their actions, records each verdict as a span, counts it in
/metrics, and lists what acted in the `x-keel-guardrails` response header. Guards are found by
kind through the `keel.guards` entry points (`registry.py`); the built-in ones live beside this
file, each in a module of its own. `base.py` holds the protocol every guard implements.
"""
