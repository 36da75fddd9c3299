"""The frozen KL reference's work on a post, kept across online updates.

An online update needs the reference's log-softmax at every completion position of its batch
and of its probe (the KL penalty, the drift check), and the reference is frozen between offline
fits, so what it computes for a post never changes. A post meets many updates: a cycle's
candidates sit in the probe of the next few updates, and the rewarded ones (with their cycles'
other candidates, when candidates teach) come back in a batch a day later. Computed once per
update, the reference's forward over all of their tokens (the prompts are most of them) cost
about as much as the policy's own passes over the probe.

So this cache keeps, per post (its prompt and completion tokens), the reference's final-norm
hidden states at the post's completion positions: (n, C), n the completion's tokens, a few
hundred floats each, where the (n, V) log-softmax they give would be a hundred times larger
(SmolLM2: 576 against 49,152 values a token). An update turns them into the log-softmax with the
head alone, at the post's own temperature. Entries are dropped oldest-used first beyond
``max_bytes``, and all of them when the reference changes: another reference object (an
offline fit, a new LoRA anchor), or the same one with a weight written in place (a parameter's
version counter moved) or replaced (its storage moved).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

# SmolLM2: 576 floats a completion token, about 100 KB a post; 256 MiB holds some 2,500 posts,
# more than the few hundred a daemon's probes and batches revisit.
DEFAULT_MAX_BYTES = 256 << 20

PostKey = tuple[tuple[int, ...], tuple[int, ...]]


def post_key(prompt: Sequence[int], completion: Sequence[int]) -> PostKey:
    return tuple(prompt), tuple(completion)


class ReferenceCache:
    """Per post, the reference's final-norm hidden states at its completion positions."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[PostKey, Tensor] = OrderedDict()
        self._bytes = 0
        self._owner: weakref.ref[nn.Module] | None = None
        self._state: tuple[tuple[int, int], ...] = ()
        self.hits = 0
        self.misses = 0

    def bind(self, reference: nn.Module) -> None:
        """Serve ``reference``: what was kept for another reference, or for this one before a
        weight of it was written in place, is dropped."""
        # A write in place moves a tensor's version counter; new storage (a move to another
        # device or dtype, weights assigned whole) moves its address.
        state = tuple((p._version, p.data_ptr()) for p in reference.parameters())
        if self._owner is None or self._owner() is not reference or state != self._state:
            self.clear()
            self._owner = weakref.ref(reference)
            self._state = state

    def get(self, key: PostKey) -> Tensor | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: PostKey, hidden: Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        # Its own storage: a view would keep the whole batch it was cut from alive.
        self._entries[key] = hidden.detach().clone()
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
