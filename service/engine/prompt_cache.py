"""Finished sequences' KV cells, kept in host RAM and restored instead of evaluated again
(issue #22), in the manner of llama-server's ``--cache-ram``.

What comes back is what users repeat: the facts of a popular place, kind of work and category
after the shared instructions, and a conversation's history up to its last turn (the prompt of
its last turn, which the next turn's prompt begins with). Restoring a few hundred tokens' cells
is a copy of some megabytes; evaluating them again is seconds of prompt work on a CPU.

An entry keeps a finished request's prompt cells from ``start`` on: what comes before (the
instructions, which every prompt shares) is in the prompt holder's cells, shared rather than
stored once per entry, and is used only while the holder still has those tokens. The answer's
cells are not kept: a later prompt repeats at most a summary of it, so they would be most of an
entry's size for a few tokens' use. A request preempted from a full KV cache keeps all its
cells here until it starts again (swap rather than recompute). Decisions only here; the bytes
are llama.cpp's (``runner``), opaque to this module. Least recently used entries go first when the
cache would pass its size.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# A restore must spare at least this many tokens of prompt work to be worth its copy.
MIN_RESTORED_TOKENS = 32


@dataclass(frozen=True, eq=False)
class SavedCells:
    """The cells of a finished sequence for positions ``start`` on: ``tokens`` are all of its
    token ids from position 0 (``packed``), ``data`` what llama_state_seq_get_data wrote."""

    tokens: bytes
    start: int
    data: bytearray

    @property
    def size(self) -> int:
        return len(self.data) + len(self.tokens)


@dataclass(frozen=True)
class Restore:
    """Restore ``cells`` and keep positions ``covered`` to ``upto`` of them (the holder gives
    those before ``covered``)."""

    cells: SavedCells
    covered: int
    upto: int

    @property
    def holds_shared_cells(self) -> bool:
        """Whether the entry was kept with cells the holder now shares (``PromptCache.narrow``)."""
        return self.cells.start < self.covered


def packed(tokens: Sequence[int]) -> bytes:
    return array("i", tokens).tobytes()


_TOKEN_BYTES = array("i").itemsize


def shared_length(a: bytes, b: bytes) -> int:
    """How many leading tokens two packed token lists share: a binary search of slice
    comparisons (memcmp), some microseconds for thousands of tokens, and no numpy, so the
    scheduler that asks stays free of it."""
    low, high = 0, min(len(a), len(b)) // _TOKEN_BYTES
    while low < high:
        middle = (low + high + 1) // 2
        end = middle * _TOKEN_BYTES
        if a[:end] == b[:end]:
            low = middle
        else:
            high = middle - 1
    return low


class PromptCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        # By start and tokens: the same prompt again (a popular combination) replaces its entry.
        self._entries: OrderedDict[tuple[int, bytes], SavedCells] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, tokens: Sequence[int], covered: int) -> Restore | None:
        """The entry that spares most of ``tokens`` beyond the ``covered`` first ones (those the
        holder already shares), if it spares at least MIN_RESTORED_TOKENS. The last token is
        never restored: its logits choose the next one."""
        if not self._entries:
            return None
        wanted = packed(tokens)
        limit = len(tokens) - 1
        best: tuple[int, int, tuple[int, bytes]] | None = None
        for key, cells in self._entries.items():
            if cells.start > covered:
                continue
            upto = min(shared_length(cells.tokens, wanted), limit)
            # Of entries that spare as much, the one from furthest on: fewer cells to restore.
            if upto - covered >= MIN_RESTORED_TOKENS and (best is None or (upto, cells.start) > best[:2]):
                best = (upto, cells.start, key)
        if best is None:
            return None
        upto, _, key = best
        self._entries.move_to_end(key)
        return Restore(self._entries[key], covered, upto)

    def put(self, tokens: Sequence[int], start: int, data: bytearray) -> bool:
        """Keep ``data`` (the cells of ``tokens`` from ``start`` on), evicting the least recently
        used entries to make room; False when it alone is larger than the cache."""
        return self._put(SavedCells(packed(tokens), start, data))

    def narrow(self, wide: SavedCells, start: int, data: bytearray) -> None:
        """Replace ``wide`` with ``data``, its cells from ``start`` on. An entry kept before the
        holder shared the instructions (the first request's, or one preempted while the holder
        was dropped) holds them too: every restore of it needs room for them all at once, and
        its cells land past the holder's, which widens every later step's attention window."""
        if self._entries.pop((wide.start, wide.tokens), None) is not None:
            self.used_bytes -= wide.size
        self._put(SavedCells(wide.tokens, start, data))

    def _put(self, cells: SavedCells) -> bool:
        if cells.size > self.capacity_bytes:
            return False
        key = (cells.start, cells.tokens)
        replaced = self._entries.pop(key, None)
        if replaced is not None:
            self.used_bytes -= replaced.size
        while self._entries and self.used_bytes + cells.size > self.capacity_bytes:
            _, old = self._entries.popitem(last=False)
            self.used_bytes -= old.size
        self._entries[key] = cells
        self.used_bytes += cells.size
        return True
