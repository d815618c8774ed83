"""Fault injection: Keel against an upstream that fails in every way a network can."""
