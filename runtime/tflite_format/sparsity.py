"""TFLite's sparse tensor encoding (SparsityParameters): where each stored value sits in the dense array."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError


def sparse_positions(shape: tuple, sparsity: dict) -> np.ndarray:
    """The flat (row-major) dense index of every value a sparse-encoded tensor stores, in storage order.

    ``sparsity`` mirrors the schema's SparsityParameters: ``traversal_order`` (the dims, then the block
    dims, in storage order), ``block_map`` (which dim each block dim splits) and ``dim_metadata``, one
    per level: ``{"format": "DENSE", "dense_size": n}`` or ``{"format": "SPARSE_CSR",
    "array_segments": [...], "array_indices": [...]}``. The walk is TFLite's FormatConverter's: a
    DENSE level repeats every parent position ``dense_size`` times; a CSR level keeps, for parent
    position p, the entries segments[p]:segments[p + 1], whose coordinates are ``array_indices``.
    """
    rank = len(shape)
    order = [int(d) for d in sparsity["traversal_order"]]
    block_map = [int(d) for d in sparsity.get("block_map", [])]
    levels = sparsity["dim_metadata"]
    if sorted(order) != list(range(rank + len(block_map))) or len(levels) != len(order):
        raise ModelError(f"sparsity: traversal order {order} does not fit rank {rank} with block map {block_map}")
    positions = np.zeros(1, np.int64)
    coordinates: dict = {}
    for dim, level in zip(order, levels):
        if level["format"] == "DENSE":
            size = int(level["dense_size"])
            parent = np.repeat(np.arange(positions.size), size)
            inner = np.tile(np.arange(size, dtype=np.int64), positions.size)
            positions = positions[parent] * size + inner
        else:
            segments = np.asarray(level["array_segments"], np.int64)
            indices = np.asarray(level["array_indices"], np.int64)
            if positions.size and positions.max() + 1 >= segments.size:
                raise ModelError(f"sparsity: {segments.size} array segments are too few for dim {dim}")
            counts = segments[positions + 1] - segments[positions]
            parent = np.repeat(np.arange(positions.size), counts)
            first = np.repeat(segments[positions] - (np.cumsum(counts) - counts), counts)
            positions = first + np.arange(parent.size)
            if positions.size and positions.max() >= indices.size:
                raise ModelError(f"sparsity: array segments of dim {dim} point past its {indices.size} indices")
            inner = indices[positions]
        coordinates = {d: c[parent] for d, c in coordinates.items()}
        coordinates[dim] = inner
    dense = []
    for dim in range(rank):
        coordinate = coordinates[dim]
        for block_dim, split in enumerate(block_map, start=rank):
            if split == dim:
                block_size = int(levels[order.index(block_dim)]["dense_size"])
                coordinate = coordinate * block_size + coordinates[block_dim]
        if coordinate.size and (coordinate.min() < 0 or coordinate.max() >= shape[dim]):
            raise ModelError(f"sparsity: a coordinate of dim {dim} lies outside shape {shape}")
        dense.append(coordinate)
    return np.ravel_multi_index(dense, shape) if dense else positions
