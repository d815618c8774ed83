"""Evaluations: unit tests for LLM apps.

A team changes a prompt, a retrieval setting or a model and learns, with numbers per sample,
whether things got better or worse. The pieces:

    datasets    JSONL (and the OpenAI evals registry format) in, versioned by content hash
    suites      YAML: a dataset, variants (model or route, prompt, parameters), graders
    graders     deterministic (exact, includes, regex, json, numeric, similarity), model-graded
                (fact, rubric), rag, python — one protocol, entry point group `keel.graders`
    runner      async, bounded, retried, resumable; every output and grade stored with the run;
                the judge is a Keel model called through the same gateway (gateway_judge.py)
    compare     per-grader means with bootstrap intervals; regressed and improved samples
    feedback    thumbs and corrections on traces become datasets; human grades calibrate judges

A target is a Keel model run through the whole pipeline (grounding, guards, JSON mode), so what
is measured is what users get.
"""
