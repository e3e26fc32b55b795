"""Update codecs, one module each, registered by name in group `compression`."""

from fedray.compression import none  # noqa: F401  (registers)
