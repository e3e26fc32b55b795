"""The entry layer: command line, one experiment end to end, resume, pre-flight checks, Ray."""
