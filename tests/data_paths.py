"""Where the test data kept in the repository lives (tests/data/README.md says what each is)."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
OPENAI_EVALS = DATA / "openai-evals"
