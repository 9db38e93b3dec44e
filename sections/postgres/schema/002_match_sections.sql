-- 002: similarity search by RPC (Supabase: supabase.rpc('match_sections', {...})).
--
-- The per-model HNSW index is on (embedding::vector(d)) partial on (model_name, dimensions), so the
-- query must use that exact expression and those literal predicates: the dimension comes from the
-- query vector and the statement is built with format(%L) so the planner can match the partial index.
-- Vectors over 2000 dimensions cannot be HNSW-indexed as `vector`; with pgvector >= 0.7 they are
-- indexed as halfvec (up to 4000), and this function then searches with the halfvec expression.
create or replace function match_sections(
    query_embedding vector,
    match_count int default 10,
    model_name text default null
) returns table (id text, title text, content text, similarity double precision)
language plpgsql stable
as $$
declare
    d int;
    cast_type text;
begin
    if query_embedding is null then
        return;
    end if;
    if match_sections.model_name is null then
        raise exception 'match_sections: model_name is required';
    end if;
    d := vector_dims(query_embedding);
    cast_type := case when d > 2000 and to_regtype('halfvec') is not null then 'halfvec' else 'vector' end;
    -- an HNSW scan returns at most ef_search rows: make it at least the number asked for
    perform set_config('hnsw.ef_search', greatest(40, least(coalesce(match_count, 40), 1000))::text, true);
    return query execute format(
        'select s.id, s.title, s.content,
                (1 - (e.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)))::double precision as similarity
           from section_embeddings e
           join sections s on s.id = e.section_id
          where e.model_name = %3$L and e.dimensions = %2$s
          order by e.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)
          limit $2',
        cast_type, d, match_sections.model_name)
    using query_embedding, match_count;
end
$$;
