"""build_sampler: Dassl's names, the batch structure of the domain/class samplers, generator-driven order."""
import random
from collections import Counter

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from dassl.data.samplers import AVAI_SAMPLERS, RandomClassSampler, RandomDomainSampler, SeqDomainSampler, build_sampler


class _Item:  # the samplers only read .label and .domain
    def __init__(self, label, domain):
        self.label, self.domain = label, domain


def _data(counts):
    """counts[(label, domain)] = n items."""
    return [_Item(label, domain) for (label, domain), n in counts.items() for _ in range(n)]


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_names_and_unknown():
    data = _data({(0, 0): 4, (1, 1): 4})
    kinds = {
        "RandomSampler": RandomSampler,
        "SequentialSampler": SequentialSampler,
        "RandomDomainSampler": RandomDomainSampler,
        "SeqDomainSampler": SeqDomainSampler,
        "RandomClassSampler": RandomClassSampler,
    }
    assert sorted(kinds) == sorted(AVAI_SAMPLERS)
    for name, cls in kinds.items():
        assert type(build_sampler(name, data_source=data, batch_size=4, n_domain=2, n_ins=2)) is cls
    with pytest.raises(ValueError, match=r"Unknown sampler type: Random \(expected one of .*RandomSampler"):
        build_sampler("Random", data_source=data)


def test_random_sampler_order_comes_from_the_generator():
    data = list(range(20))
    first = list(build_sampler("RandomSampler", data_source=data, generator=_gen(5)))
    torch.rand(10)  # global RNG use does not matter
    assert list(build_sampler("RandomSampler", data_source=data, generator=_gen(5))) == first
    assert sorted(first) == data and first != data
    # Without a generator: torch's global RNG, as in Dassl.
    torch.manual_seed(0)
    a = list(build_sampler("RandomSampler", data_source=data))
    torch.manual_seed(0)
    assert list(build_sampler("RandomSampler", data_source=data)) == a


def test_seq_domain_sampler_batches_every_domain_in_order():
    data = _data({(0, 0): 7, (0, 1): 5, (0, 2): 9})  # 3 domains, 2 images each per batch
    sampler = SeqDomainSampler(data, batch_size=6, generator=_gen(0))
    idxs = list(sampler)
    # stops after the round where a domain has < 2 left: min(7 // 2, 5 // 2, 9 // 2) = 2 rounds
    assert len(idxs) == len(sampler) == 12 and len(set(idxs)) == 12
    assert [data[i].domain for i in idxs] == [0, 0, 1, 1, 2, 2] * 2
    assert list(SeqDomainSampler(data, batch_size=6, generator=_gen(0))) == idxs
    with pytest.raises(ValueError, match="not divisible"):
        SeqDomainSampler(data, batch_size=4)


def test_random_domain_sampler_batches_n_domains():
    data = _data({(0, 0): 8, (0, 1): 8, (0, 2): 8})
    idxs = list(RandomDomainSampler(data, batch_size=4, n_domain=2, generator=_gen(1)))
    assert len(idxs) % 4 == 0 and len(set(idxs)) == len(idxs)  # no image twice in an epoch
    for b in range(0, len(idxs), 4):
        domains = [data[i].domain for i in idxs[b : b + 4]]
        assert domains[0] == domains[1] and domains[2] == domains[3] and domains[0] != domains[2]
    with pytest.raises(ValueError, match="n_domain=4"):
        RandomDomainSampler(data, batch_size=4, n_domain=4)


def test_random_class_sampler_groups_n_ins_per_class():
    data = _data({(0, 0): 6, (1, 0): 4, (2, 0): 1, (3, 0): 5})  # class 2 has fewer than n_ins: drawn with replacement
    random.seed(0)
    sampler = RandomClassSampler(data, batch_size=4, n_ins=2)
    idxs = list(sampler)
    assert len(idxs) % 4 == 0
    for b in range(0, len(idxs), 4):
        labels = [data[i].label for i in idxs[b : b + 4]]
        assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    per_class = Counter(data[i].label for i in idxs)
    assert all(n % 2 == 0 for n in per_class.values())
    with pytest.raises(ValueError, match="no less than n_ins"):
        RandomClassSampler(data, batch_size=2, n_ins=4)
