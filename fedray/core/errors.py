"""Errors that fedray reports to the user as one line, without a traceback."""


class FedrayError(Exception):
    """Base class: the message is complete and says how to fix the problem."""


class ConfigError(FedrayError, ValueError):
    """A configuration value or combination is invalid."""


class DataError(FedrayError, ValueError):
    """A dataset cannot be read, or cannot be partitioned as asked."""


class ModelError(FedrayError, ValueError):
    """A model cannot be loaded or adapted as asked."""


class QuorumError(FedrayError, RuntimeError):
    """Too few clients returned an update for a round."""


class BudgetExhausted(FedrayError):
    """A privacy budget would be exceeded by the next round: the run ends cleanly before it."""
