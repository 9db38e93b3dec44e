-- 004: change capture for `sections watch`, failures that know what they failed on, workers that
-- say what they do, and the rate budget workers share.
--
-- Any writer counts (the CLI, the Python API, plain SQL, a Supabase client): a trigger moves
-- `updated_at` when a section's title or content changes (so a watcher can look at recent changes
-- first) and sends a NOTIFY on channel `sections_changed` with the collection as payload. Postgres
-- delivers notifications at commit, once per distinct payload per transaction, so a bulk load
-- sends one per collection, not one per row. Whether a vector is due stays what it always was: its
-- fingerprint against `sections_content_hash` of the row (deleted rows take their vectors along).

create or replace function sections_mark_changed() returns trigger
language plpgsql
set search_path = pg_catalog, public
as $$
begin
    if tg_op = 'INSERT' or new.title is distinct from old.title or new.content is distinct from old.content then
        new.updated_at := clock_timestamp();
        perform pg_notify('sections_changed', new.collection);
    end if;
    return new;
end
$$;

drop trigger if exists sections_mark_changed on sections;
create trigger sections_mark_changed
    before insert or update of title, content on sections
    for each row execute function sections_mark_changed();

create index if not exists sections_updated_at_idx on sections (updated_at);

-- The fingerprint a failure was recorded for: a watcher retries a failed section with a growing
-- delay, and stops after a number of attempts until its content (so its fingerprint) changes.
alter table embedding_failures add column if not exists content_hash bytea;

alter table section_workers add column if not exists model_name text;
alter table section_workers add column if not exists collection text;

-- One row per provider budget (base URL + model): workers on any machine reserve their requests
-- here (GCRA: each reservation moves the theoretical arrival time by its share of the rate), so
-- together they run at the provider's limit instead of each learning it from 429s.
create table if not exists rate_budgets (
    key                   text primary key,
    tokens_per_minute     double precision,
    requests_per_minute   double precision,
    token_tat             timestamptz not null default now(),
    request_tat           timestamptz not null default now(),
    updated_at            timestamptz not null default now()
);
