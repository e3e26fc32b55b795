"""Privacy mechanisms, one module each, registered by name in group `privacy`."""
