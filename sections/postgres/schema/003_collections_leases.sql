-- 003: collections, sources, and leases.
--
-- A collection is a namespace of sections (`default` unless named): search and sync stay inside one.
-- Ids stay unique across collections (vectors and failures are keyed by section id), so a section
-- cannot silently move between collections: an ingest refuses an id another collection holds.
-- `source` is the file a section was read from (absolute path; null for sections given through the
-- API or stdin): `ingest --prune` and `delete --source` select by it.
alter table sections add column if not exists collection text not null default 'default';
alter table sections add column if not exists source text;
create index if not exists sections_collection_id_idx on sections (collection, id);
create index if not exists sections_collection_source_idx on sections (collection, source);

-- A worker is one running ingest/sync: leases are held by it and vanish with it (heartbeat too old,
-- or its process gone on this host), so a crashed run never blocks the sections it was embedding.
create table if not exists section_workers (
    id          uuid primary key,
    host        text not null,
    pid         int not null,
    command     text not null,
    started_at  timestamptz not null default now(),
    last_beat   timestamptz not null default now(),
    embedded    bigint not null default 0
);

-- A lease says "this worker is embedding this section for this model": another run skips it, so
-- concurrent runs over the same sections pay once. Written vectors and failures drop their lease.
create table if not exists section_leases (
    section_id  text not null references sections(id) on delete cascade,
    model_name  text not null,
    worker_id   uuid not null references section_workers(id) on delete cascade,
    leased_at   timestamptz not null default now(),
    primary key (section_id, model_name)
);
create index if not exists section_leases_worker_idx on section_leases (worker_id);
