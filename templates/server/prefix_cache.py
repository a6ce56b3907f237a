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
    """A radix-trie node: the run of tokens on the edge into it, the entries whose ids run through
    that edge, and the entry whose ids end where it ends."""

    __slots__ = ("children", "edge", "end", "entries")

    def __init__(self, edge: tuple[int, ...]) -> None:
        self.edge = edge
        self.children: dict[int, _Node] = {}  # by the first token of their edge
        self.entries: dict[int, Entry] = {}
        self.end: Entry | None = None


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.reused_tokens = 0  # for the tests and the benchmark: tokens not recomputed
        self._root = _Node(())
        self._lru: OrderedDict[int, Entry] = OrderedDict()
        self._keys = count()

    def __len__(self) -> int:
        return len(self._lru)

    def longest(self, ids: Sequence[int]) -> tuple[int, Entry | None]:
        """How many leading ids a cached entry shares with `ids`, and that entry (now the most
        recently used)."""
        path, depth = self._walk(tuple(ids))
        if not depth:
            return 0, None
        entry = next(iter(path[-1][0].entries.values()))
        self._lru.move_to_end(entry.key)
        return depth, entry

    def put(self, ids: Sequence[int], layers: Layers) -> None:
        """Keep `layers` (copies the caller will not touch again) as the states of `ids`."""
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        key = tuple(ids)
        if not key or nbytes > self.budget:
            return
        path, depth = self._walk(key)
        if depth == len(key) and path[-1][1] == len(path[-1][0].edge) and path[-1][0].end:
            self._lru.move_to_end(path[-1][0].end.key)  # already cached
            return
        # Cached prompts the new one extends go first: it answers all they did.
        for old in [node.end for node, matched in path if matched == len(node.edge) and node.end]:
            self._drop(old)
        while self.used + nbytes > self.budget:
            self._drop(next(iter(self._lru.values())))
        self._insert(Entry(key, layers, nbytes, next(self._keys)))
        self.used += nbytes

    def clear(self) -> None:
        self._root, self.used = _Node(()), 0
        self._lru.clear()

    def _walk(self, ids: tuple[int, ...]) -> tuple[list[tuple[_Node, int]], int]:
        """The nodes the longest cached prefix of `ids` runs through, each with how many tokens
        of its edge it matches (all but maybe the last's), and that prefix's length."""
        path, node, depth = [], self._root, 0
        while depth < len(ids) and (child := node.children.get(ids[depth])) is not None:
            edge = child.edge
            run = ids[depth : depth + len(edge)]
            matched = len(edge) if run == edge else _common(edge, run)  # C-speed when it agrees
            path.append((child, matched))
            depth += matched
            if matched < len(edge):
                break
            node = child
        return path, depth

    def _insert(self, entry: Entry) -> None:
        path, depth = self._walk(entry.ids)
        node = self._root
        node.entries[entry.key] = entry
        for child, matched in path:
            if matched < len(child.edge):  # split the edge where the new ids part from it
                middle = _Node(child.edge[:matched])
                middle.entries = dict(child.entries)
                child.edge = child.edge[matched:]
                middle.children[child.edge[0]] = child
                node.children[middle.edge[0]] = middle
                child = middle
            child.entries[entry.key] = entry
            node = child
        if depth < len(entry.ids):
            leaf = _Node(entry.ids[depth:])
            node.children[leaf.edge[0]] = leaf
            leaf.entries[entry.key] = entry
            node = leaf
        node.end = entry
        self._lru[entry.key] = entry

    def _drop(self, entry: Entry) -> None:
        node, depth = self._root, 0
        del node.entries[entry.key]
        while depth < len(entry.ids):
            child = node.children[entry.ids[depth]]
            del child.entries[entry.key]
            if not child.entries:  # nothing else runs through here: the whole branch goes
                del node.children[entry.ids[depth]]
                break
            depth += len(child.edge)
            node = child
        else:
            node.end = None
        del self._lru[entry.key]
        self.used -= entry.nbytes


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token runs."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
