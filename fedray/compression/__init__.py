"""Update codecs, one module each, registered by name in group `compression`."""
