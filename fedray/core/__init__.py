"""Shared vocabulary: types, state math, errors, seeding, registry, config schema, checkpoints.

Imports nothing else of fedray; every other part may import it.
"""
