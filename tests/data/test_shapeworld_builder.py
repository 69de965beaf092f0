"""ShapeWorld builder, voxelisation and the external-generator backend."""

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from debias3d.data.assets import Asset, VoxelGrid
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.builder import build, build_voxels, scene_problems
from debias3d.data.shapeworld.grammar import sample_prompts
from debias3d.data.shapeworld.parser import parse
from debias3d.data.shapeworld.voxelize import mesh_to_voxels, voxels_to_mesh
from debias3d.registry import find


@pytest.mark.parametrize("noun", vocab.NOUNS)
def test_every_noun_builds_on_the_floor(noun):
    asset = build(parse(f"a {noun}"), rng=0)
    occ = asset.voxels.occupancy
    assert occ.shape == (16, 16, 16) and occ.sum() > 10
    assert occ[:, :, 0].any(), "stands on the floor"
    _lab, n = ndimage.label(occ, structure=np.ones((3, 3, 3)))
    assert n == 1, "one object is one connected component"
    v = asset.mesh.vertices
    assert asset.mesh.is_watertight
    assert v.min() >= -1.0 - 1e-6 and v.max() <= 1.0 + 1e-6
    assert asset.mesh.visual.vertex_colors.shape == (len(v), 4)


def test_build_is_deterministic_and_jittered():
    spec = parse("a tall red vase with a long neck")
    a, b, c = (build_voxels(spec, rng=s) for s in (1, 1, 2))
    assert np.array_equal(a.occupancy, b.occupancy) and np.allclose(a.colors, b.colors)
    assert not np.array_equal(a.occupancy, c.occupancy) or not np.allclose(a.colors, c.colors)
    assert np.array_equal(build_voxels(spec).occupancy, build_voxels(spec).occupancy)


def test_words_change_the_grid():
    h = {
        t: np.flatnonzero(build_voxels(parse(t)).occupancy.any((0, 1))).max()
        for t in ("a vase", "a tall vase")
    }
    assert h["a tall vase"] >= h["a vase"] + 3
    assert build_voxels(parse("a floating cup")).occupancy[:, :, :3].sum() == 0
    red = build_voxels(parse("a red cup"))
    assert np.allclose(np.median(red.colors[red.occupancy], 0), vocab.COLOURS["red"], atol=0.05)


@pytest.mark.parametrize(
    "text,n", [("two cups", 2), ("three boxes", 3), ("a cup next to a vase", 2), ("three stacked bowls", 3)]
)
def test_groups_are_separate_components(text, n):
    occ = build_voxels(parse(text), rng=3).occupancy
    _lab, k = ndimage.label(occ, structure=np.ones((3, 3, 3)))
    assert k == n


def test_sampled_scenes_fit_the_grid():
    for i, p in enumerate(sample_prompts(120, rng=4)):
        assert not scene_problems(p.spec)
        asset = build(p.spec, rng=i, mesh_resolution=None)
        assert not asset.metadata["clipped"], p.text


def test_voxel_mesh_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(5):
        occ = ndimage.binary_opening(rng.random((16, 16, 16)) < 0.35) | (rng.random((16, 16, 16)) < 0.03)
        col = (rng.random((16, 16, 16, 3)) * occ[..., None]).astype(np.float32)
        mesh = voxels_to_mesh(VoxelGrid(occ, col))
        assert mesh.is_watertight and mesh.volume > 0
        back = mesh_to_voxels(mesh)
        assert np.array_equal(back.occupancy, occ)
    g = build_voxels(parse("a blue vase"), rng=0)
    back = mesh_to_voxels(voxels_to_mesh(g))
    assert np.allclose(back.colors[g.occupancy], g.colors[g.occupancy], atol=0.08)


def test_mesh_to_voxels_of_a_primitive():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    g = mesh_to_voxels(box, 16)
    assert g.occupancy.sum() == 8**3
    assert np.allclose(g.colors[g.occupancy], g.colors[g.occupancy][0])


@pytest.mark.parametrize(
    "mesh,match",
    [
        (trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)), "empty"),
        (
            trimesh.Trimesh(np.array([[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]]), [[0, 1, 2]], process=False),
            "NaN",
        ),
        (
            trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float), [[0, 1, 2]], process=False),
            "degenerate",
        ),
    ],
)
def test_bad_meshes_raise(mesh, match):
    with pytest.raises(ValueError, match=match):
        mesh_to_voxels(mesh)


def test_empty_grid_has_no_mesh():
    with pytest.raises(ValueError, match="empty"):
        voxels_to_mesh(VoxelGrid.empty())


def test_external_generator_backend():
    gen = find("external_generator", "shapeworld")()
    assets = gen.generate(["A ceramic vase with a long, narrow neck", "two red cups"], [0, 1])
    assert [a.prompt for a in assets] == ["A ceramic vase with a long, narrow neck", "two red cups"]
    assert all(isinstance(a, Asset) and a.voxels.resolution == 16 and a.seed is not None for a in assets)
    with pytest.raises(ValueError):
        gen.generate(["a purple elephant"], [0])
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(["a cup"], [0, 1])
