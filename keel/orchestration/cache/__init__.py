"""The cache layer: exact and semantic answers reused; see layer.py."""
