"""Calls of operators on the evaluator's allow-list (handback.ALLOWED_OPERATORS) with sizes or indices
that do not fit their tensors. Each must raise (on CUDA, an index fault is a device-side assert) rather
than read or write outside its tensors: what the allow-list's choice of kernels rests on. Pure torch;
tests/test_evaluate.py runs them on CPU, bench/redteam_gpu_check.py on CUDA."""

from __future__ import annotations

from collections.abc import Callable

import torch

aten = torch.ops.aten


def bad_calls(device: str) -> dict[str, Callable[[], object]]:
    """Name -> a call that must raise, on `device`."""

    def ones(*shape: int) -> torch.Tensor:
        return torch.ones(*shape, device=device)

    def index(*values: int) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    q = ones(1, 1, 4, 8)
    return {
        "embedding, an index past the table": lambda: aten.embedding.default(ones(4, 3), index(4)),
        "embedding, a negative index": lambda: aten.embedding.default(ones(4, 3), index(-1)),
        "index_select, an index past the end": lambda: aten.index_select.default(ones(4, 3), 0, index(7)),
        "native_layer_norm, a short weight": lambda: aten.native_layer_norm.default(
            ones(2, 4), [4], ones(1), ones(4), 1e-5
        ),
        "native_layer_norm, a short bias": lambda: aten.native_layer_norm.default(
            ones(2, 4), [4], ones(4), ones(1), 1e-5
        ),
        "mm, inner sizes differ": lambda: aten.mm.default(ones(2, 3), ones(4, 2)),
        "bmm, inner sizes differ": lambda: aten.bmm.default(ones(2, 2, 3), ones(2, 4, 2)),
        "addmm, a short bias": lambda: aten.addmm.default(ones(3), ones(2, 4), ones(4, 5)),
        "cat, sizes differ": lambda: aten.cat.default([ones(2, 3), ones(2, 4)]),
        "select, an index past the end": lambda: aten.select.int(ones(2, 3), 1, 3),
        "view, another element count": lambda: aten.view.default(ones(2, 3), [7]),
        "expand, a size that does not broadcast": lambda: aten.expand.default(ones(2, 3), [2, 4]),
        "split_with_sizes, sizes that do not add up": lambda: aten.split_with_sizes.default(ones(6), [2, 2]),
        "constant_pad_nd, a cut past the size": lambda: aten.constant_pad_nd.default(ones(2, 3), [-4, 0]),
        "topk, k past the size": lambda: aten.topk.default(ones(3), 5),
        "add, shapes that do not broadcast": lambda: aten.add.Tensor(ones(2, 3), ones(4)),
        "where, shapes that do not broadcast": lambda: aten.where.self(ones(2, 3).bool(), ones(2, 4), ones(2, 3)),
        "repeat, fewer repeats than dimensions": lambda: aten.repeat.default(ones(2, 3), [2]),
        "scaled_dot_product_attention, a mask of another shape": lambda: aten.scaled_dot_product_attention.default(
            q, q, q, ones(1, 1, 5, 5)
        ),
    }
