"""Database models, migrations and the file store."""
