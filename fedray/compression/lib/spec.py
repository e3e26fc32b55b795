"""The layout both ends already know: ordered keys and shapes of the (float32) trainable state.

A payload never carries key names or shapes; encoder and decoder flatten a :data:`State` into one
float32 vector in the order of :class:`~fedray.core.types.StateSpec` and cut it back the same way.
"""

from fedray.core.types import StateSpec

__all__ = ["StateSpec"]
