"""The ground both halves stand on: settings, the database, the broker, outbound HTTP, shared names.

Nothing here imports ``hub``, ``relay``, ``clients`` or ``reversehub.server`` (tests/test_layering.py).
"""
