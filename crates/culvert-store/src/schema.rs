//! Schema migrations, shared by SQLite and PostgreSQL.
