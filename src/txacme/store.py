"""The seed's import path for :class:`DirectoryStore`; the code lives in
:mod:`txacme.stores.directory`."""

from txacme.stores.directory import DEFAULT_NAME, DirectoryStore, load_entry, write_entry

__all__ = ["DEFAULT_NAME", "DirectoryStore", "load_entry", "write_entry"]
