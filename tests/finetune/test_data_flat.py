"""Pairs and corpus rows store voxels flattened; the fine-tuning loader must reshape them."""

import numpy as np

from debias3d.finetune.data import _voxels


def test_flat_voxels_are_reshaped():
    r = 4
    occ = np.zeros((r, r, r), np.uint8)
    occ[1, 2, 3] = 1
    col = np.zeros((r, r, r, 3), np.uint8)
    col[1, 2, 3] = (255, 0, 10)
    got = _voxels({"occupancy": occ.reshape(-1).tolist(), "colors": col.reshape(-1).tolist()}, None)
    assert got is not None
    assert np.array_equal(got[0], occ) and np.array_equal(got[1], col)


def test_flat_voxels_wrong_length_rejected():
    assert _voxels({"occupancy": [1] * 10, "colors": [0] * 30}, None) is None
    assert _voxels({"occupancy": [1] * 64, "colors": [0] * 64}, None) is None
