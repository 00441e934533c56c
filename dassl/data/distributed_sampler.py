"""Batch samplers of a multi-process run: each rank's share of the single-process batches.

:class:`ShardedBatchSampler` (training) wraps the sampler a single-process run would use, whatever it is and
whatever RNG it draws from. Every rank draws that sampler's full order for the epoch (so every rank's RNG advances
as in the single-process run), rank 0's order is broadcast (so the shards always partition one order, even if the
ranks' RNGs have drifted apart, e.g. through random augmentations in the main process), the order is cut into the
single-process batches of ``batch_size`` (with the same ``drop_last``), and each batch into ``world_size``
contiguous shards, the first ``len(batch) % world_size`` of them one image longer. Concatenating the shards of a
step in rank order gives the single-process batch exactly.

:class:`ShardedEvalBatchSampler` (evaluation) cuts the whole order into ``world_size`` contiguous parts, without
padding, and batches each part with ``batch_size`` images: the evaluation batch is per process.
"""
from torch.utils.data.sampler import Sampler

from dassl.utils import UserError

__all__ = ["shard_bounds", "ShardedBatchSampler", "ShardedEvalBatchSampler", "sharded_loader_args"]


def shard_bounds(n, rank, world):
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``n`` items split into ``world`` parts."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatchSampler(Sampler):
    """Rank ``rank``'s shard of every batch the single-process loader would make from ``sampler``."""

    def __init__(self, sampler, batch_size, drop_last, rank, world_size):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        n = len(sampler)
        smallest = batch_size if drop_last or n % batch_size == 0 else n % batch_size
        smallest = min(smallest, n)
        if smallest < world_size:
            raise UserError(
                f"{world_size} processes but a training batch holds only {smallest} image(s) (batch size {batch_size}, "
                f"{n} training images): every process needs at least one image per batch; use at most {smallest} "
                "processes or a larger DATALOADER.TRAIN_X.BATCH_SIZE (it is the global batch, split across processes)"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size

    @property
    def generator(self):
        """The wrapped sampler's generator, if it has one (the trainer saves its state with checkpoints)."""
        return getattr(self.sampler, "generator", None)

    def global_batches(self):
        """This epoch's single-process batches (draws the wrapped sampler once; rank 0's order wins)."""
        order = [int(i) for i in self.sampler]
        from dassl.engine import distributed  # imported here: dassl.engine imports the data package

        order = distributed.broadcast_object(order, src=0)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if batches and self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            start, stop = shard_bounds(len(batch), self.rank, self.world_size)
            if start == stop:
                raise UserError(f"a batch of {len(batch)} image(s) cannot be shared by {self.world_size} processes; "
                                "use fewer processes or a larger DATALOADER.TRAIN_X.BATCH_SIZE")
            yield batch[start:stop]

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class ShardedEvalBatchSampler(Sampler):
    """Rank ``rank``'s contiguous part of ``sampler``'s order, in batches of ``batch_size`` (no padding)."""

    def __init__(self, sampler, batch_size, rank, world_size):
        n = len(sampler)
        if n < world_size:
            raise UserError(f"{world_size} processes but an evaluation split has only {n} image(s); use at most {n} "
                            "processes")
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start, self.stop = shard_bounds(n, rank, world_size)

    def __iter__(self):
        part = [int(i) for i in self.sampler][self.start:self.stop]
        for i in range(0, len(part), self.batch_size):
            yield part[i:i + self.batch_size]

    def __len__(self):
        return -(-(self.stop - self.start) // self.batch_size)


def sharded_loader_args(sampler, batch_size, drop_last, is_train):
    """``DataLoader`` keyword arguments for this rank in a multi-process run (``None`` in a single process)."""
    from dassl.engine import distributed

    if not distributed.is_distributed():
        return None
    rank, world = distributed.get_rank(), distributed.get_world_size()
    if is_train:
        batch_sampler = ShardedBatchSampler(sampler, batch_size, drop_last, rank, world)
    else:
        batch_sampler = ShardedEvalBatchSampler(sampler, batch_size, rank, world)
    return {"batch_sampler": batch_sampler}
