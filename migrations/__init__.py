"""Alembic migrations of the outcome log (installed as ``zeta_adaptive.migrations``)."""
