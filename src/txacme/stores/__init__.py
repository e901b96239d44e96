"""Stores: where certificates live. The directory store, PostgreSQL, memory, the coordination
interface
and lease algorithm for stores shared by several processes, and stores by URL.

May import the core modules only.
"""

__all__: list[str] = []
