"""Grounding: answers rooted in the company's facts, not the model's memory.

Two halves, as in the talk: a **knowledge store** (`knowledge/`: collections of documents,
ingested, chunked, embedded, searched with full-text and vectors fused, cited) and **tools**
(`tools/`: HTTP services, Python functions and MCP servers the model calls through function
calling, executed by Keel in a loop). Each is a pipeline layer: `knowledge` retrieves and injects
sources before the model answers; `tools` offers the tools, runs the calls and feeds results back.
"""
