"""Conflict-free replicated data types: pure, no I/O.

Every type here is a join-semilattice: ``merge`` is commutative, associative
and idempotent (``tests/core/test_crdt_laws.py`` proves it with hypothesis).
Each offers ``join`` (merge in place, used by the fast op fold) and ``merge``
(returns a new value, leaving both inputs untouched).
"""

from chrysalis_memory.crdt.counters import GCounter
from chrysalis_memory.crdt.hlc import HLC, HybridClock, Stamp
from chrysalis_memory.crdt.registers import LWWRegister, MaxRegister, MinRegister
from chrysalis_memory.crdt.sets import Dot, GSet, LWWMap, ORSet

__all__ = [
    "HLC",
    "Dot",
    "GCounter",
    "GSet",
    "HybridClock",
    "LWWMap",
    "LWWRegister",
    "MaxRegister",
    "MinRegister",
    "ORSet",
    "Stamp",
]
