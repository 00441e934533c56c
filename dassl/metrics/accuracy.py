"""Top-k classification accuracy."""

__all__ = ["compute_accuracy"]


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent.

    Args:
        output (Tensor or tuple): logits of shape ``(batch, num_classes)``; for a tuple/list its first element.
        target (LongTensor): ground-truth labels of shape ``(batch,)``.
        topk (tuple of int): the ``k`` values.

    Returns:
        list of 1-element float tensors, ``100 * correct / batch`` for each ``k``; callers use ``[0].item()``.
    """
    maxk = max(topk)
    batch_size = target.size(0)
    if isinstance(output, (tuple, list)):
        output = output[0]
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
