"""Everything that speaks SQL: the connection and migrations, the embedded server, the write path,
claims and leases, indexes, search, status. Nothing outside this folder holds SQL.
"""
