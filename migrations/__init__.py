"""Alembic migrations shipped inside the package.

``HEAD`` is the newest revision, so that a server can tell that its database is current with one
SELECT and without importing Alembic (``reversehub.core.db.migrate``). Bump it with every new revision;
``tests/test_migrations.py`` fails when it differs from Alembic's own head.
"""

HEAD = "0009_feed_state"
