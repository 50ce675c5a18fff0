"""Test helpers importable as `support.*` (tests/ is on sys.path via conftest)."""
