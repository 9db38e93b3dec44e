-- 009: the shared rate budget learns the provider's burst and follows its replies. The capacity of
-- each bucket (what the provider grants at once: remaining + rate x reset, often far less than a
-- minute's worth) sets how far ahead of now a reservation may go; the running totals of what was
-- reserved let a reply's x-ratelimit-remaining (the level when that request was admitted) be
-- brought forward by what every worker reserved after it.
alter table rate_budgets add column if not exists token_capacity double precision;
alter table rate_budgets add column if not exists request_capacity double precision;
alter table rate_budgets add column if not exists tokens_reserved double precision not null default 0;
alter table rate_budgets add column if not exists requests_reserved double precision not null default 0;
