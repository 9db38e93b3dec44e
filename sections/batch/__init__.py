"""OpenAI's Batch API path: the job types, planning input files within its limits, reading result
files back into one result per section, and a service's Batch API side.
"""
