"""The submission server's shared-prefix cache: the key/value states of recent prompts, by token.

HELM's few-shot scenarios send hundreds of prompts that begin with the same instructions and
in-context examples and ask for one to a few tokens, so most of a request's work is reading a
prefix the server has read before. engine.py stores each prompt's key/value states here after
reading it, and a new prompt starts from the longest prefix (in token ids, so prompts that
diverge inside what would be one token of text still match exactly as far as their ids agree)
that any cached prompt shares with it.

Bounded by a byte budget (PREFIX_CACHE_MB), least recently used first out. Entries are private
copies: a request reads a slice of them into its own batch cache and never writes them back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [heads, tokens, dim]


@dataclass(eq=False)
class Entry:
    ids: tuple[int, ...]
    layers: Layers
    nbytes: int
    key: int


class _Node:
    """A token-trie node: the entries whose ids pass through it, and the one that ends here."""

    __slots__ = ("children", "end", "entries")  # one per cached token: kept small and quick

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.entries: dict[int, Entry] = {}
        self.end: Entry | None = None


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.reused_tokens = 0  # for the tests and the benchmark: tokens not recomputed
        self._root = _Node()
        self._lru: OrderedDict[int, Entry] = OrderedDict()
        self._keys = count()

    def __len__(self) -> int:
        return len(self._lru)

    def longest(self, ids: Sequence[int]) -> tuple[int, Entry | None]:
        """How many leading ids a cached entry shares with `ids`, and that entry (now the most
        recently used)."""
        path = self._path(ids)
        if not path:
            return 0, None
        entry = next(iter(path[-1].entries.values()))
        self._lru.move_to_end(entry.key)
        return len(path), entry

    def put(self, ids: Sequence[int], layers: Layers) -> None:
        """Keep `layers` (copies the caller will not touch again) as the states of `ids`."""
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if not ids or nbytes > self.budget:
            return
        path = self._path(ids)
        if len(path) == len(ids) and path[-1].end is not None:
            self._lru.move_to_end(path[-1].end.key)  # already cached
            return
        for node in path:  # cached prompts the new one extends: it answers all they did
            if node.end is not None:
                self._drop(node.end)
        while self.used + nbytes > self.budget:
            self._drop(next(iter(self._lru.values())))
        entry = Entry(tuple(ids), layers, nbytes, next(self._keys))
        node = self._root
        node.entries[entry.key] = entry
        for token in ids:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
            node = child
            node.entries[entry.key] = entry
        node.end = entry
        self._lru[entry.key] = entry
        self.used += nbytes

    def clear(self) -> None:
        self._root, self.used = _Node(), 0
        self._lru.clear()

    def _path(self, ids: Sequence[int]) -> list[_Node]:
        """The nodes of the longest cached prefix of `ids`, one per token."""
        path, node = [], self._root
        for token in ids:
            child = node.children.get(token)
            if child is None:
                break
            path.append(child)
            node = child
        return path

    def _drop(self, entry: Entry) -> None:
        node = self._root
        del node.entries[entry.key]
        for token in entry.ids:
            child = node.children[token]
            del child.entries[entry.key]
            if not child.entries:  # nothing else passes here: the whole branch goes
                del node.children[token]
                break
            node = child
        else:
            node.end = None
        del self._lru[entry.key]
        self.used -= entry.nbytes
