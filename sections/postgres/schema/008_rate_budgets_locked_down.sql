-- 008: rate_budgets (004) is locked down like every other table the project creates (005): row-level
-- security on, no policy, so only its owner (the CLI's role) and Supabase's service_role reach it.
alter table rate_budgets enable row level security;
