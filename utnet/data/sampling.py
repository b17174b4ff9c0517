"""Seeded sampling for exact resume: the data order and the augmentation depend only on (seed, epoch, sample).

`EpochSampler` draws one permutation per (seed, epoch); `SeededSamples` seeds torch's RNG from (seed,
epoch, index) while a sample is made. Neither depends on the worker count, the process count or on
batches skipped by a resumed run, so an interrupted and resumed run sees the same samples with the same
augmentation as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

_MIX = 1_000_003  # a prime: (seed, epoch, index) -> distinct seeds


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` of a run seeded `seed` (its permutation, its DataLoader worker seeds)."""
    return seed * _MIX + epoch


class EpochSampler(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch); yields (epoch, index) pairs.

    Every rank draws the same permutation (accelerate shards its batches), and a resumed run draws the
    same one again. The epoch travels with the index so that SeededSamples can seed the augmentation.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        epoch = self.epoch
        return iter([(epoch, i) for i in torch.randperm(self.num_samples, generator=generator).tolist()])


class SeededSamples(Dataset):
    """dataset[(epoch, index)] with torch's RNG seeded from (seed, epoch, index) while the sample is made.

    The data pipeline draws its augmentation from torch's RNG; seeding it per sample makes the
    augmentation independent of worker count, process count and of skipped batches (exact resume).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((epoch_seed(self.seed, epoch) * _MIX + index) % (2**63 - 1))
            return self.dataset[index]
