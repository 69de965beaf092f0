"""Mesh files: GLB is y-up as glTF requires, the internal frame stays z-up, round trips are exact."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from debias3d.data.assets import load_mesh, mesh_bytes, save_mesh


def _tower() -> trimesh.Trimesh:
    """A box 3 units tall along z (the project's up) with its top pushed towards +y."""
    m = trimesh.creation.box(extents=(1.0, 1.0, 3.0))
    m.vertices[m.vertices[:, 2] > 0, 1] += 0.5
    m.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(m.vertices), 1))
    return m


def test_glb_is_y_up_for_a_standard_reader(tmp_path):
    path = save_mesh(_tower(), tmp_path / "t.glb")
    raw = trimesh.load(path, force="mesh")  # what a glTF viewer sees: +y is up
    assert np.argmax(raw.extents) == 1 and raw.extents[1] == pytest.approx(3.0)
    top = raw.vertices[raw.vertices[:, 1] > 0]
    assert top[:, 2].min() == pytest.approx(-1.0)  # z-up +y (forward) is glTF -z


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_round_trip_keeps_the_internal_frame(tmp_path, fmt):
    m = _tower()
    back = load_mesh(save_mesh(m, tmp_path / f"t.{fmt}"))
    np.testing.assert_allclose(np.sort(back.vertices, axis=0), np.sort(m.vertices, axis=0), atol=1e-6)
    np.testing.assert_allclose(back.bounds, m.bounds, atol=1e-6)


def test_glb_bytes_and_files_agree(tmp_path):
    m = _tower()
    assert save_mesh(m, tmp_path / "t.glb").read_bytes() == mesh_bytes(m, "glb")
    assert np.allclose(m.bounds, _tower().bounds)  # the caller's mesh is not turned


def test_generate_writes_y_up_glb(tmp_path):
    """The shipped generator's GLB stands up in a viewer: read raw, its up axis is +y."""
    from debias3d.models.backbone.cli import generate_command

    (path,) = generate_command(["a tall red vase"], tmp_path, samples=1)
    raw = trimesh.load(path, force="mesh")
    back = load_mesh(path)
    np.testing.assert_allclose(raw.bounds[:, 1], back.bounds[:, 2], atol=1e-6)
    np.testing.assert_allclose(raw.bounds[:, 2], -back.bounds[::-1, 1], atol=1e-6)
