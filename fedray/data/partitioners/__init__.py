"""Builtin partitioners, one per module; see :mod:`fedray.data.partition`."""
