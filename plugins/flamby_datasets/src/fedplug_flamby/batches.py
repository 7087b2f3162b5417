"""How a FLamby center's training batches are drawn: the data read once, and two batch orders.

**Materialized data.** FLamby's tabular datasets (``FlambyDatasetInfo.fixed_items``: an item is
the same on every read) are read item by item through FLamby's ``__getitem__`` once per node and
kept as two tensors (on the training device, a GPU's memory included); a batch is then an index
into them, the same values a ``DataLoader`` would collate, without a Python call per sample. A
dataset module with its own ``collate_fn`` keeps batching through it.

**fedplug's order** (the default): each round starts a fresh pass, shuffled by the round's seed,
exactly as ``DataLoader(dataset, batch_size, shuffle=True, generator=generator)`` would draw it
(:func:`loader_batches` replays its use of the generator), so materializing changes no result.

**FLamby's order** (:class:`FlambyOrder`): FLamby's strategies read each client through a
``DataLoaderWithMemory`` whose iterator lives across rounds (a pass may span two rounds), and its
shuffles come from torch's *global* generator, seeded once by the benchmark's ``set_seed(seed)``
after the strategy is built: a client draws its sampler's seed when a pass starts, preceded by the
new iterator's base seed for every pass after its first. The clients train one after the other, so
which draws a center gets depends on every center's train size. A node cannot see the others' draws,
but given the seed and all the sizes it replays the whole stream and keeps its own: the same
batches, round for round, as FLamby's loop. This holds while nothing else draws from torch's global
generator during FLamby's training (no dropout, no random augmentation: true of the linear
baselines of Fed-TCGA-BRCA, Fed-Heart-Disease and Fed-Synthetic).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from fedplug.errors import ConfigError

ORDERS = ("fedplug", "flamby")


def _draw(generator: torch.Generator | None) -> int:
    """One int64 from ``generator`` (None: torch's global one), as torch's data loading draws."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def loader_batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator | None
) -> Iterator[torch.Tensor]:
    """``steps`` index batches in the order ``DataLoader(shuffle=True, generator=generator)``
    yields them over ``n`` samples, pass after pass, using ``generator`` as it does: each pass's
    iterator draws a base seed, its sampler a permutation, and a pass read to its end one more
    (empty) permutation, before its short last batch or when the batch after a full last one is
    asked. Without a generator the sampler seeds its own from the global one."""
    done = 0
    while True:
        _draw(generator)  # the new iterator's base seed
        sampler = generator
        if sampler is None:
            sampler = torch.Generator().manual_seed(_draw(None))
        order = torch.randperm(n, generator=sampler)
        for start in range(0, n, batch_size):
            if start + batch_size > n:  # a short last batch: collecting it exhausts the sampler
                torch.randperm(n, generator=sampler)  # (its remainder: an empty permutation)
            yield order[start : start + batch_size]
            done += 1
            if done == steps:
                return
        if n % batch_size == 0:  # the sampler's remainder, drawn when the next batch is asked
            torch.randperm(n, generator=sampler)


@dataclass(frozen=True)
class FlambyOrder:
    """FLamby's batches for the center at ``position`` among clients of train sizes ``sizes``
    (FLamby's client order), ``num_updates`` batches of ``batch_size`` per round, global
    generator seeded with ``seed`` before the first round."""

    seed: int
    sizes: tuple[int, ...]
    position: int
    batch_size: int
    num_updates: int

    def _passes(self, size: int) -> int:
        return -(-size // self.batch_size)  # batches per pass (the last one may be smaller)

    def pass_seeds(self, round_index: int) -> dict[int, int]:
        """The sampler seed of each pass (0, 1, ...) this center started up to ``round_index``,
        replaying every client's draws from the global stream in FLamby's order."""
        stream = torch.Generator().manual_seed(self.seed)
        seeds: dict[int, int] = {}
        for k in range(round_index + 1):
            first_batch, end_batch = k * self.num_updates, (k + 1) * self.num_updates
            for q, size in enumerate(self.sizes):
                per_pass = self._passes(size)
                for m in range(-(-first_batch // per_pass), (end_batch - 1) // per_pass + 1):
                    if m > 0:
                        _draw(stream)  # a new iterator (the old one ran out): its base seed
                    seed = _draw(stream)  # its sampler's permutation seed, at its first batch
                    if q == self.position:
                        seeds[m] = seed
                if k == round_index and q == self.position:
                    return seeds
        return seeds

    def batches(self, round_index: int) -> Iterator[torch.Tensor]:
        """The index batches this center trains on in round ``round_index`` (0 for the first)."""
        size = self.sizes[self.position]
        per_pass = self._passes(size)
        seeds = self.pass_seeds(round_index)
        orders: dict[int, torch.Tensor] = {}
        for t in range(round_index * self.num_updates, (round_index + 1) * self.num_updates):
            m, j = divmod(t, per_pass)
            if m not in orders:
                orders[m] = torch.randperm(size, generator=torch.Generator().manual_seed(seeds[m]))
            yield orders[m][j * self.batch_size : (j + 1) * self.batch_size]


def parse_order(value: Any) -> dict[str, Any] | None:
    """``model_args["batch_order"]`` checked: None/"fedplug", or FLamby's order as
    ``{"order": "flamby", "seed": int, "centers": [[center, train size], ...]}``."""
    if value is None or value == "fedplug":
        return None
    if value == "flamby":
        raise ConfigError(
            "batch_order='flamby' needs the seed and every center's train size: use "
            "flamby_experiment(..., batch_order='flamby', seed=...), which fills them in"
        )
    if not isinstance(value, dict) or value.get("order") != "flamby":
        raise ConfigError(
            f"model_args batch_order must be 'fedplug' or FLamby's order "
            f"({{'order': 'flamby', 'seed': ..., 'centers': [[center, size], ...]}}), got {value!r}"
        )
    seed, centers = value.get("seed"), value.get("centers")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"batch_order's seed must be an integer, got {seed!r}")
    if (
        not isinstance(centers, (list, tuple))
        or not centers
        or not all(
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            and pair[1] > 0
            for pair in centers
        )
    ):
        raise ConfigError(
            f"batch_order's centers must list [center, train size] pairs with sizes > 0, "
            f"got {centers!r}"
        )
    return {"order": "flamby", "seed": seed, "centers": [list(pair) for pair in centers]}


def materialize(samples: Any) -> tuple[Any, Any]:
    """All of ``samples`` (a torch dataset of ``(x, y)`` items) stacked as one batch (torch's
    ``default_collate``, which stacks item by item: indexing the result gives any batch's)."""
    x, y = default_collate([samples[i] for i in range(len(samples))])[:2]
    return x, y
