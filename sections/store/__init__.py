"""``SupabaseStore``, the face a library user holds, and the parts it hands work to: lifecycle,
indexes, Batch API runs and searches, each given what it needs in its constructor.
"""
