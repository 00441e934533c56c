"""Index samplers for the data loaders (``reference/dassl-api.md`` section 6.5).

``build_sampler(name, ...)`` accepts Dassl's names. Without a generator (what
:func:`dassl.data.data_manager.build_data_loader` passes by default) the draws come from the global RNGs as in
Dassl: torch's for ``RandomSampler`` (PyTorch's own class), Python's ``random`` for the domain and class
samplers. With an optional ``torch.Generator`` they come only from that generator.
"""
import copy
import random
from collections import defaultdict

import torch
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

__all__ = [
    "AVAI_SAMPLERS",
    "build_sampler",
    "RandomDomainSampler",
    "SeqDomainSampler",
    "RandomClassSampler",
]


def _python_rng(generator):
    """A ``random.Random`` seeded from ``generator`` (one draw), or the ``random`` module when there is none."""
    if generator is None:
        return random
    return random.Random(int(torch.randint(2**62, (), generator=generator)))


def _dry_run_rng(generator):
    """An RNG for estimating an epoch's length without advancing ``generator`` or Python's global ``random``."""
    return random.Random(generator.initial_seed() if generator is not None else 0)


class _PythonRandomSampler(Sampler):
    """Base of the samplers that draw with Python's ``random`` API; ``__len__`` is the length of one draw."""

    def __init__(self, generator=None):
        self.generator = generator
        self.length = len(self._indices(_dry_run_rng(generator)))

    def _indices(self, rng):
        raise NotImplementedError

    def __iter__(self):
        return iter(self._indices(_python_rng(self.generator)))

    def __len__(self):
        return self.length


def _indices_by(data_source, key):
    groups = defaultdict(list)
    for i, item in enumerate(data_source):
        groups[getattr(item, key)].append(i)
    return groups


class _DomainBatchSampler(_PythonRandomSampler):
    """Batches of ``n_img_per_domain`` random images from each domain of a round, until a domain runs short."""

    def _round(self, rng):
        """The domains of the next batch."""
        raise NotImplementedError

    def _indices(self, rng):
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs = []
        stop_sampling = False
        while not stop_sampling:
            for domain in self._round(rng):
                selected = rng.sample(domain_dict[domain], self.n_img_per_domain)
                final_idxs.extend(selected)
                for idx in selected:
                    domain_dict[domain].remove(idx)
                if len(domain_dict[domain]) < self.n_img_per_domain:
                    stop_sampling = True
        return final_idxs


class RandomDomainSampler(_DomainBatchSampler):
    """Each batch holds ``batch_size // n_domain`` images from each of ``n_domain`` randomly chosen domains.

    The epoch ends when a chosen domain has fewer images left than that. ``n_domain <= 0`` means all domains.
    ``__len__`` is the length of one draw (the epoch length varies with the draw, as in Dassl).
    """

    def __init__(self, data_source, batch_size, n_domain, generator=None):
        self.data_source = data_source
        self.domain_dict = _indices_by(data_source, "domain")
        self.domains = list(self.domain_dict.keys())
        if n_domain is None or n_domain <= 0:
            n_domain = len(self.domains)
        if batch_size % n_domain != 0:
            raise ValueError(f"RandomDomainSampler: batch_size={batch_size} is not divisible by n_domain={n_domain}")
        if n_domain > len(self.domains):
            raise ValueError(f"RandomDomainSampler: n_domain={n_domain} but the data has {len(self.domains)} domains")
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        super().__init__(generator)

    def _round(self, rng):
        return rng.sample(self.domains, self.n_domain)


class SeqDomainSampler(_DomainBatchSampler):
    """Each batch holds ``batch_size // n_domains`` random images of every domain, in sorted domain order.

    The epoch ends after the round in which some domain has fewer images left than that.
    """

    def __init__(self, data_source, batch_size, generator=None):
        self.data_source = data_source
        self.domain_dict = _indices_by(data_source, "domain")
        self.domains = sorted(self.domain_dict.keys())
        n_domain = len(self.domains)
        if batch_size % n_domain != 0:
            raise ValueError(f"SeqDomainSampler: batch_size={batch_size} is not divisible by {n_domain} domains")
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        super().__init__(generator)

    def _round(self, rng):
        return self.domains


class RandomClassSampler(_PythonRandomSampler):
    """Each batch holds ``n_ins`` images of each of ``batch_size // n_ins`` randomly chosen classes.

    A class with fewer than ``n_ins`` images is filled up by drawing with replacement. The epoch ends when fewer
    than ``batch_size // n_ins`` classes have a full group left.
    """

    def __init__(self, data_source, batch_size, n_ins, generator=None):
        if batch_size < n_ins:
            raise ValueError(f"batch_size={batch_size} must be no less than n_ins={n_ins}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = _indices_by(data_source, "label")
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler: a batch needs {self.ncls_per_batch} classes, the data has {len(self.labels)}"
            )
        super().__init__(generator)

    def _indices(self, rng):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = list(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = rng.choices(idxs, k=self.n_ins)
            rng.shuffle(idxs)
            for start in range(0, len(idxs) - self.n_ins + 1, self.n_ins):
                batch_idxs_dict[label].append(idxs[start : start + self.n_ins])

        avai_labels = list(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in rng.sample(avai_labels, self.ncls_per_batch):
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if len(batch_idxs_dict[label]) == 0:
                    avai_labels.remove(label)
        return final_idxs


#: Names accepted by :func:`build_sampler` (``DATALOADER.*.SAMPLER``).
AVAI_SAMPLERS = ["RandomSampler", "SequentialSampler", "RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler"]


def build_sampler(
    sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16, generator=None
):
    """Build the sampler named ``sampler_type`` over ``data_source``.

    ``RandomSampler`` draws a new permutation each epoch (no replacement); ``SequentialSampler`` keeps the
    order. ``generator`` (optional) is the only source of randomness when given. Unknown names: ``ValueError``.
    """
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source, generator=generator)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain, generator=generator)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size, generator=generator)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins, generator=generator)
    raise ValueError(f"Unknown sampler type: {sampler_type} (expected one of {AVAI_SAMPLERS})")
