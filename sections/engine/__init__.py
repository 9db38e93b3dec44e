"""The engine: count tokens, plan and pack requests, one rate limiter, send in parallel, match
replies by index, assemble outcomes; ``service.EmbeddingService`` is its face.
"""
