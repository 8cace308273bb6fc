"""Adapter training. Depends on :mod:`lookaside`, never on :mod:`service`."""
