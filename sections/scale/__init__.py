"""Past one machine: the same ingest with its embedding on Ray Data actors (``--engine ray``).

Ray is the ``ray`` extra, imported only when a run asks for it: ``import sections`` and the command's
start-up never load it. ``ray_ingest.ray_ingest`` is the library's entry (a Ray Dataset of sections),
``ray_embedder.RayEmbedder`` the embedder the command hands its ingest, ``actor.EmbedBatch`` what
runs on each actor.
"""
