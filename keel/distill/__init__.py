"""Distillation: teacher outputs → training set → student → eval → route.

Once a strong model (or an expensive pipeline) does a narrow job well, its recorded answers
train a cheaper student, evals prove the student keeps the quality, and the router sends it
traffic; the same loop trains a cheap judge from a strong judge's grades and people's. Each
step leaves lineage in the store (keel.distill.lineage): which traces became which training
set, which job trained which model, which eval run approved its promotion.

    dataset.py      `keel distill dataset`: examples from traces or a teacher run, deduplicated,
                    PII-scrubbed, split and versioned as eval datasets
    export.py       OpenAI chat fine-tuning JSONL, and validate.py its validator
    backends/       training backends behind one protocol: openai (any compatible fine-tuning
                    API) and local (the embedded SmolLM2, on this machine's CPU)
    evaluate.py     teacher, base student and trained student on the held-out split
    promote.py      shadow, canary and router promotion
    judge.py        a distilled judge and its calibration
"""
