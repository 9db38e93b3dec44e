-- 007: an index on (model_name, dimensions) of section_embeddings.
--
-- After every ingest the store asks which dimensions a model holds and how many vectors of each,
-- to build a missing HNSW index (a rerun that embeds nothing included) and to drop the index of a
-- dimension no longer stored. Without this index each of those questions reads the whole table
-- (every model's vectors); with it, they are short index scans. On a large table the build may
-- outlast a role's statement_timeout (Supabase caps `postgres` at 2 minutes): this transaction
-- lifts it for itself only.
set local statement_timeout = 0;
create index if not exists section_embeddings_model_dimensions_idx on section_embeddings (model_name, dimensions);
