"""Persistence: the SQLite op log and materialised documents."""

from chrysalis_memory.store.sqlite import Durability, ListQuery, OpStore, RankFields

__all__ = ["Durability", "ListQuery", "OpStore", "RankFields"]
