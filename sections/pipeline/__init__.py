"""The orchestration of a run: read → fingerprint/skip → embed → write, over a ``Backend``.

``ingest`` stores sections it is given and embeds what is due; ``sync`` embeds what is due among
the stored sections, claiming work so that many processes can share it. Neither knows SQL: they
talk to a ``Backend`` (``sections.postgres.backend.PostgresBackend`` in production), so they can be
tested against any backend that passes the contract suite (``test/test_backend_contract.py``).
"""
