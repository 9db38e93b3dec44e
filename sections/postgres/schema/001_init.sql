-- 001: tables for sections, their embeddings (one row per section and model, any dimension per
-- model) and the embeddings that failed. Written to adopt an existing table of the same name: every
-- column is added if missing, nothing is dropped or retyped.

create extension if not exists vector;

create table if not exists sections (
    id          text primary key,
    title       text,
    content     text,
    metadata    jsonb,
    updated_at  timestamptz not null default now()
);
alter table sections add column if not exists title text;
alter table sections add column if not exists content text;
alter table sections add column if not exists metadata jsonb;
alter table sections add column if not exists updated_at timestamptz not null default now();

create table if not exists section_embeddings (
    section_id            text not null references sections(id) on delete cascade,
    model_name            text not null,
    embedding             vector not null,          -- no fixed dimension: any per model
    dimensions            int not null,             -- vector_dims(embedding), for the partial HNSW indexes
    content_hash          bytea,                    -- sections_content_hash(...) of what was embedded
    token_count           int not null default 0,
    requested_dimensions  int,                      -- the `dimensions` asked of the model (null: its default)
    long_input            text,                     -- the long-input policy used (average/truncate/fail)
    created_at            timestamptz not null default now(),
    primary key (section_id, model_name),
    constraint section_embeddings_dimensions_check check (dimensions = vector_dims(embedding))
);
alter table section_embeddings add column if not exists dimensions int;
alter table section_embeddings add column if not exists content_hash bytea;
alter table section_embeddings add column if not exists token_count int not null default 0;
alter table section_embeddings add column if not exists requested_dimensions int;
alter table section_embeddings add column if not exists long_input text;
alter table section_embeddings add column if not exists created_at timestamptz not null default now();
update section_embeddings set dimensions = vector_dims(embedding) where dimensions is null;

create table if not exists embedding_failures (
    section_id       text not null references sections(id) on delete cascade,
    model_name       text not null,
    reason           text not null,
    attempts         int not null default 1,
    last_attempt_at  timestamptz not null default now(),
    primary key (section_id, model_name)
);

-- What determines a vector, hashed the way core.supabase_store.content_hash does it in Python, so
-- the database can tell which embeddings are out of date without shipping content to a client:
-- sha256 over NUL-separated UTF-8 fields (no field can contain NUL: Postgres text cannot hold it),
-- the first 16 bytes. The embedded text is title + "\n\n" + content, or content when the title is empty.
create or replace function sections_content_hash(
    title text, content text, model text, dimensions int, long_input text
) returns bytea
language sql immutable parallel safe
as $$
    select substring(sha256(
        convert_to('sections.content_hash.v1', 'UTF8') || '\x00'::bytea ||
        convert_to(coalesce(model, ''), 'UTF8') || '\x00'::bytea ||
        convert_to(coalesce(dimensions::text, ''), 'UTF8') || '\x00'::bytea ||
        convert_to(coalesce(long_input, ''), 'UTF8') || '\x00'::bytea ||
        convert_to(case when coalesce(title, '') <> '' then title || E'\n\n' || coalesce(content, '')
                        else coalesce(content, '') end, 'UTF8')
    ) from 1 for 16)
$$;
