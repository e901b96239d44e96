"""Stores: where certificates live. The directory store (:mod:`~txacme.stores.directory`),
stores in memory (:mod:`~txacme.stores.memory`), PostgreSQL (:mod:`~txacme.stores.postgres`,
with :mod:`~txacme.stores.keysealing` for keys at rest), the coordination interface and lease
algorithm for stores shared by several processes (:mod:`~txacme.stores.coordination`), and
stores by URL (:mod:`~txacme.stores.url`).

May import the core modules only.
"""

__all__: list[str] = []
