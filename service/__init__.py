"""Lookaside's HTTP service (FastAPI). Depends on :mod:`lookaside`, never on :mod:`training`."""
