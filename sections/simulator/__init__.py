"""An OpenAI-compatible embeddings server (and Batch API) for tests and benchmarks: limits, faults,
reordered replies, and counts of what it served and billed.
"""
