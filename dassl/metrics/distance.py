"""Pairwise distances between two sets of feature vectors."""
import torch
import torch.nn.functional as F

__all__ = ["compute_distance_matrix", "euclidean_squared_distance", "cosine_distance"]


def compute_distance_matrix(input1, input2, metric="euclidean"):
    """Distance matrix of shape ``(m, n)`` between ``input1`` ``(m, d)`` and ``input2`` ``(n, d)``.

    ``metric`` is ``"euclidean"`` (squared) or ``"cosine"``.
    """
    if not (input1.dim() == 2 and input2.dim() == 2):
        raise ValueError("Expected 2-D tensors, but got {}-D and {}-D".format(input1.dim(), input2.dim()))
    if input1.size(1) != input2.size(1):
        raise ValueError("Feature sizes differ: {} vs {}".format(input1.size(1), input2.size(1)))
    if metric == "euclidean":
        return euclidean_squared_distance(input1, input2)
    if metric == "cosine":
        return cosine_distance(input1, input2)
    raise ValueError("Unknown distance metric: {}. Please choose either 'euclidean' or 'cosine'".format(metric))


def euclidean_squared_distance(input1, input2):
    """Squared Euclidean distances, ``(m, n)``."""
    m, n = input1.size(0), input2.size(0)
    mat1 = torch.pow(input1, 2).sum(dim=1, keepdim=True).expand(m, n)
    mat2 = torch.pow(input2, 2).sum(dim=1, keepdim=True).expand(n, m).t()
    return (mat1 + mat2).addmm(input1, input2.t(), beta=1, alpha=-2)


def cosine_distance(input1, input2):
    """``1 - cosine similarity``, ``(m, n)``."""
    input1_normed = F.normalize(input1, p=2, dim=1)
    input2_normed = F.normalize(input2, p=2, dim=1)
    return 1 - torch.mm(input1_normed, input2_normed.t())
