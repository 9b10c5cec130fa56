"""Where everything per thread and per user lives: the protocol and its implementations."""

from .base import Binding, Store
from .memory import MemoryStore

__all__ = ["Binding", "MemoryStore", "Store"]
