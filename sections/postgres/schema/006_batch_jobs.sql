-- 006: Batch API jobs and the sections each one covers.
--
-- A job is recorded before the provider is asked to run it, and its items before anyone waits on
-- it: a rerun, or a run after a crash, resumes the recorded jobs and never pays twice for a section
-- a live job covers. An item is (job, section, the fingerprint of the text sent, where its pieces
-- sit in the file); it lives until the job's result for it is written, failed or handed to a new
-- job, so "covered" is simply "an item with this section, model and fingerprint exists". Items do
-- not reference sections: a section deleted meanwhile is reported as gone when its job is collected.
create table if not exists section_batch_jobs (
    id                    uuid primary key,
    model_name            text not null,
    requested_dimensions  int,
    long_input            text,
    collection            text,                 -- where its sections came from (null: several)
    endpoint              text not null,        -- the API's base URL: a batch id means something only there
    status                text not null default 'submitting',  -- submitting, then the Batch API's statuses
    batch_id              text unique,
    input_file_id         text,
    output_file_id        text,
    error_file_id         text,
    worker_id             uuid references section_workers(id) on delete set null,  -- the run submitting it
    requests              int not null,
    inputs                int not null,
    sections              int not null,
    tokens                bigint not null,      -- counted before sending: what the estimate is of
    total                 int not null default 0,  -- request_counts, as last polled
    completed             int not null default 0,
    failed                int not null default 0,
    billed_tokens         bigint not null default 0,  -- from the result lines collected
    written               int not null default 0,  -- vectors stored from it
    failures              int not null default 0,  -- sections recorded as failed from it
    changed               int not null default 0,  -- results not written: the section changed meanwhile
    retried               int not null default 0,  -- sections handed to a later job
    errors                text,                 -- why the batch failed (validation), one problem a line
    created_at            timestamptz not null default now(),
    polled_at             timestamptz,
    finished_at           timestamptz,
    collected_at          timestamptz
);
create index if not exists section_batch_jobs_open_idx on section_batch_jobs (model_name) where collected_at is null;

create table if not exists section_batch_items (
    job_id        uuid not null references section_batch_jobs(id) on delete cascade,
    section_id    text not null,
    model_name    text not null,
    content_hash  bytea not null,   -- the fingerprint of the text sent: written only if still current
    requests      int[] not null,   -- each piece's request (custom_id req-N) ...
    positions     int[] not null,   -- ... its input index inside that request ...
    weights       int[] not null,   -- ... and its tokens, the weight of its vector in the mean
    attempt       int not null default 1,
    primary key (job_id, section_id)
);
create index if not exists section_batch_items_section_idx on section_batch_items (section_id, model_name);

alter table section_batch_jobs enable row level security;
alter table section_batch_items enable row level security;
