"""The operator's PostgreSQL access: the only package that imports psycopg."""
