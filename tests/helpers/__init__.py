"""Test helpers: tiny models, the loopback Hub, published folders, a tiny trainer (imported as
``tests.helpers.X``; fixtures live in conftest.py)."""
