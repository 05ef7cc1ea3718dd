"""The roof: the app that composes the relay and the hub, the command line, serving, the dashboard.

The only package that imports both ``hub`` and ``relay`` (tests/test_layering.py).
"""
