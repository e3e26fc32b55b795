"""Privacy mechanisms, one module each, registered by name in group `privacy`."""

from fedray.privacy import none  # noqa: F401  (registers)
