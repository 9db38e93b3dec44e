"""Reading documents: JSONL/JSON/CSV/Markdown/MDX/reST/text files into validated sections, Markdown's
headings into stable ids, long sections into chunks, and the demo's corpus.
"""
