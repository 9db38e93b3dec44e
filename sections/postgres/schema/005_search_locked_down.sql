-- 005: locked down by default, and the search people expect (filters, hybrid) by RPC.
--
-- Row-level security on every table: on Supabase a table in `public` is reachable through the Data
-- API with the project's public anon key unless RLS says otherwise. Enabled with no policy, it lets
-- nobody but the table's owner (who runs the migrations and the CLI) and roles with BYPASSRLS
-- (Supabase's service_role) see a row; exposing search is a policy the README shows. Every table a
-- later migration creates gets the same line (ARCHITECTURE.md's rules; test_search_rls checks it).
alter table sections enable row level security;
alter table section_embeddings enable row level security;
alter table embedding_failures enable row level security;
alter table schema_migrations enable row level security;
alter table section_workers enable row level security;
alter table section_leases enable row level security;

-- Full text for hybrid search: English stemming and stop words, so "how do I resize pictures"
-- asks for 'resiz' & 'pictur' and finds "resizes a picture" ('simple' would also demand "how",
-- "do" and "i", and match no inflection). Computed when a section is written (a stored generated
-- column: one parse per insert or change, none per query); the parse is most of its write cost,
-- so title and content are parsed once, unweighted. Bounded input: a tsvector cannot exceed 1 MB,
-- and a section of 1 MB of distinct words would fail its whole write batch; positions stop
-- counting at 16,383 anyway, so the tail would add little rank.
alter table sections add column if not exists fts tsvector generated always as (
    to_tsvector('english'::regconfig, left(coalesce(title, '') || ' ' || coalesce(content, ''), 100000))
) stored;
create index if not exists sections_fts_idx on sections using gin (fts);

-- The restriction a search adds on `sections s`, as SQL with literals (so the planner sees the
-- values): the collection (null: any), metadata containing `filter` (jsonb @>; {} or null: any),
-- and a source under one of `sources` (each the file itself, or a folder: anything beneath it).
create or replace function sections_search_where(filter jsonb, collection text, sources text[])
returns text
language plpgsql immutable parallel safe
as $$
begin
    if jsonb_typeof(sections_search_where.filter) not in ('object', 'null') then
        raise exception 'search filter must be a JSON object, not %', jsonb_typeof(sections_search_where.filter);
    end if;
    return concat(
        case when sections_search_where.collection is not null
             then format(' and s.collection = %L', sections_search_where.collection) end,
        case when jsonb_typeof(sections_search_where.filter) = 'object' and sections_search_where.filter <> '{}'
             then format(' and s.metadata @> %L::jsonb', sections_search_where.filter) end,
        case when cardinality(sections_search_where.sources) > 0
             then format(' and exists (select 1 from unnest(%L::text[]) p'
                         ' where s.source = p or starts_with(s.source, rtrim(p, ''/'') || ''/''))',
                         sections_search_where.sources) end);
end
$$;

-- The query's words as a full-text query, read as a web search box reads them (Supabase's
-- hybrid-search guide does the same): every word must appear (stemmed, stop words dropped),
-- "quoted words" in that order, `or` between alternatives, -word excluded. Null when no word is
-- left (only stop words): the search is then the vector ranking alone. Measured on the real-docs
-- questions (README), OR-ing every word of a question instead ranks pages by its commonest words
-- and does worse than vector search alone; who wants that writes `or` between the words.
create or replace function sections_tsquery(query_text text)
returns tsquery
language sql immutable parallel safe
as $$
    select case when numnode(q) > 0 then q end
      from websearch_to_tsquery('english'::regconfig, coalesce(query_text, '')) q
$$;

-- Similarity search by RPC (Supabase: supabase.rpc('match_sections', {...})), now with filters.
-- The old three-argument calls work unchanged (the new parameters have defaults); the function is
-- replaced, not overloaded, so such a call is never ambiguous.
--
-- The per-model HNSW index is on (embedding::vector(d)) partial on (model_name, dimensions), so the
-- query uses that exact expression and those literal predicates (format %L): the dimension comes
-- from the query vector. Over 2,000 dimensions the index is on halfvec (pgvector >= 0.7). With a
-- filter, pgvector 0.8's iterative scan keeps reading the index until enough rows pass (up to
-- hnsw.max_scan_tuples), so a selective filter still returns match_count rows; its relaxed order
-- is put right by sorting those few rows.
drop function if exists match_sections(vector, int, text);
create function match_sections(
    query_embedding vector,
    match_count int default 10,
    model_name text default null,
    filter jsonb default '{}',
    collection text default null,
    sources text[] default null
) returns table (id text, title text, content text, similarity double precision, metadata jsonb)
language plpgsql stable
as $$
declare
    d int;
    cast_type text;
    restriction text;
begin
    if query_embedding is null or coalesce(match_count, 0) < 1 then
        return;
    end if;
    if match_sections.model_name is null then
        raise exception 'match_sections: model_name is required';
    end if;
    d := vector_dims(query_embedding);
    cast_type := case when d > 2000 and to_regtype('halfvec') is not null then 'halfvec' else 'vector' end;
    restriction := sections_search_where(match_sections.filter, match_sections.collection, match_sections.sources);
    -- these settings end with the function (its SET clause, below, makes a nesting level of settings)
    perform set_config('hnsw.ef_search', greatest(40, least(match_count, 1000))::text, true);
    if restriction <> '' and current_setting('hnsw.iterative_scan', true) is not null then  -- pgvector >= 0.8
        perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
    end if;
    return query execute format(
        'with nearest as materialized (
             select s.id, s.title, s.content, s.metadata,
                    e.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s) as distance
               from section_embeddings e
               join sections s on s.id = e.section_id
              where e.model_name = %3$L and e.dimensions = %2$s%4$s
              order by e.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)
              limit $2)
         select id, title, content, (1 - distance)::double precision, metadata
           from nearest order by distance, id',
        cast_type, d, match_sections.model_name, restriction)
    using query_embedding, match_count;
end
$$;

-- Hybrid search by RPC: full-text ranking fused with vector ranking by reciprocal rank fusion, as
-- Supabase's hybrid-search guide does: each side's candidates (2 × match_count, at least 20) are
-- ranked, and a section scores full_text_weight / (rrf_k + its full-text rank) + semantic_weight /
-- (rrf_k + its vector rank). Both sides search the same sections (the filters, and only sections
-- embedded with the model), and every hit carries its cosine similarity.
create or replace function hybrid_match_sections(
    query_text text,
    query_embedding vector,
    match_count int default 10,
    model_name text default null,
    filter jsonb default '{}',
    collection text default null,
    sources text[] default null,
    full_text_weight double precision default 1,
    semantic_weight double precision default 1,
    rrf_k int default 60
) returns table (id text, title text, content text, similarity double precision, metadata jsonb,
                 rrf_score double precision)
language plpgsql stable
as $$
declare
    d int;
    candidates int;
begin
    if query_embedding is null or coalesce(match_count, 0) < 1 then
        return;
    end if;
    if hybrid_match_sections.model_name is null then
        raise exception 'hybrid_match_sections: model_name is required';
    end if;
    d := vector_dims(query_embedding);
    candidates := least(greatest(match_count, 10) * 2, 1000);
    return query execute format(
        'with semantic as (
             select m.id, row_number() over (order by m.similarity desc, m.id) as rank_ix
               from match_sections($1, %1$s, %2$L, $3, $4, $5) m),
         full_text as (
             select s.id, row_number() over (order by ts_rank_cd(s.fts, $2) desc, s.id) as rank_ix
               from sections s
              where s.fts @@ $2%3$s
                and exists (select 1 from section_embeddings e
                             where e.section_id = s.id and e.model_name = %2$L and e.dimensions = %4$s)
              order by rank_ix
              limit %1$s),
         fused as (
             select coalesce(f.id, v.id) as id,
                    coalesce($6 / ($8 + f.rank_ix), 0) + coalesce($7 / ($8 + v.rank_ix), 0) as score
               from full_text f full join semantic v on f.id = v.id)
         select s.id, s.title, s.content, (1 - (e.embedding <=> $1))::double precision, s.metadata,
                fused.score::double precision
           from fused
           join sections s on s.id = fused.id
           join section_embeddings e on e.section_id = fused.id and e.model_name = %2$L
          order by fused.score desc, 4 desc, s.id
          limit $9',
        candidates, hybrid_match_sections.model_name,
        sections_search_where(hybrid_match_sections.filter, hybrid_match_sections.collection,
                              hybrid_match_sections.sources), d)
    using query_embedding, sections_tsquery(query_text), hybrid_match_sections.filter,
          hybrid_match_sections.collection, hybrid_match_sections.sources, full_text_weight, semantic_weight,
          rrf_k, match_count;
end
$$;

-- A fixed search_path on every function of ours, resolved now: pg_catalog first (nothing can
-- shadow a built-in), then the schema these tables live in, then pgvector's, which differs between
-- servers (`public` on the embedded one, `extensions` on Supabase). A caller whose search_path
-- lacks pgvector's schema (`function vector_dims(extensions.vector) does not exist`) can then call
-- match_sections, and Supabase's advisor no longer flags a mutable search_path.
do $$
declare
    home text := current_schema();
    vector_home text := (select e.extnamespace::regnamespace::text from pg_extension e where e.extname = 'vector');
    path text;
    fn regprocedure;
begin
    path := concat_ws(', ', 'pg_catalog', quote_ident(home),
                      case when vector_home is distinct from quote_ident(home) then vector_home end, 'pg_temp');
    for fn in
        select p.oid::regprocedure from pg_proc p
         where p.pronamespace = quote_ident(home)::regnamespace
           and p.proname in ('sections_content_hash', 'sections_search_where', 'sections_tsquery',
                             'match_sections', 'hybrid_match_sections')
    loop
        execute format('alter function %s set search_path = %s', fn, path);
    end loop;
end
$$;
