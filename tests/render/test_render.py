"""Behaviour tests for debias3d.render: rigs, off-screen rendering, errors, contact sheets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from debias3d.render import (
    Camera,
    CameraRig,
    Renderer,
    RenderError,
    contact_sheet,
    mate3d_rig,
    normalize_vertices,
    resolve_up,
    smooth_vertex_scores,
    t3bench_rig,
)

SIZE = 64


def _colored(mesh: trimesh.Trimesh, rgb: tuple[int, int, int]) -> trimesh.Trimesh:
    mesh.visual.vertex_colors = np.tile([*rgb, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    return mesh


def _asymmetric_mesh() -> trimesh.Trimesh:
    """A box with a small sphere stuck on +x and a tall cylinder on +y: every view differs."""
    parts = [
        _colored(trimesh.creation.box(extents=(1.0, 0.6, 0.4)), (200, 60, 60)),
        _colored(trimesh.creation.icosphere(2, radius=0.3).apply_translation((0.7, 0, 0)), (60, 200, 60)),
        _colored(trimesh.creation.cylinder(0.15, 1.2).apply_translation((0, 0.5, 0.3)), (60, 60, 200)),
    ]
    return trimesh.util.concatenate(parts)


@pytest.fixture(scope="module")
def renderer():
    with Renderer(image_size=SIZE) as r:
        yield r


# ---- rigs -----------------------------------------------------------------------------------------


def test_mate3d_rig_views():
    rig = mate3d_rig()
    assert len(rig) == 6 and rig.normalize == "unit_sphere" and rig.background == "white"
    assert rig.names == ["front", "right", "back", "left", "top", "bottom"]
    expected = [(2, 0, 0), (0, 2, 0), (-2, 0, 0), (0, -2, 0), (0, 0, 2), (0, 0, -2)]
    for cam, pos in zip(rig, expected, strict=True):
        np.testing.assert_allclose(cam.position, pos, atol=1e-12)
        view = np.subtract(cam.focal_point, cam.position)
        assert abs(np.dot(view, cam.up)) < 1e-9  # up is orthogonal to the view direction
        assert math.isclose(np.linalg.norm(cam.up), 1.0)
    # top/bottom views (elev ±90) are the singular case of a z-up world
    np.testing.assert_allclose(rig[4].up, (-1, 0, 0), atol=1e-12)
    np.testing.assert_allclose(rig[5].up, (1, 0, 0), atol=1e-12)


@pytest.mark.parametrize(
    ("level", "n_positions"),
    [(0, 12), (1, 42), (2, 162)],
)
def test_t3bench_rig_counts_and_adjacency(level, n_positions):
    rig = t3bench_rig(level=level)
    assert rig.n_positions == n_positions
    assert len(rig) == n_positions * 5 and len(rig.fovs) == 5
    np.testing.assert_allclose(np.linalg.norm(rig.positions, axis=1), 2.2)
    assert rig.position_index.tolist() == np.repeat(np.arange(n_positions), 5).tolist()
    adj = rig.adjacency
    assert len(adj) == n_positions
    for p, nbrs in enumerate(adj):
        assert p not in nbrs and len(nbrs) in (5, 6)  # icosphere valences
        for n in nbrs:
            assert p in adj[n]  # symmetric
    assert rig.normalize == "unit_cube"


def test_smooth_vertex_scores_preserves_constants_and_spreads_peaks():
    adj = t3bench_rig(level=1).adjacency
    np.testing.assert_allclose(smooth_vertex_scores(np.full(len(adj), 3.0), adj), 3.0)
    peak = np.zeros(len(adj))
    peak[0] = 1.0
    s = smooth_vertex_scores(peak, adj, iterations=3)
    assert s.argmax() == 0 and (s[list(adj[0])] > 0).all() and s[0] < 1.0


@pytest.mark.parametrize("position", [(0, 0, 3), (0, 0, -3), (1e-9, 0, 3), (2, 1, 0.5)])
def test_resolve_up_is_valid_everywhere(position):
    cam = Camera.look_at(position)
    view = np.subtract(cam.focal_point, cam.position)
    assert np.linalg.norm(np.cross(view, cam.up)) > 1e-3


def test_camera_rejects_parallel_up():
    with pytest.raises(ValueError, match="parallel"):
        Camera(position=(0, 0, 2), up=(0, 0, 1))
    assert resolve_up((0, 0, 2)) @ np.array([0, 0, 1]) == pytest.approx(0.0)


def test_normalize_vertices_modes():
    v = np.array([[0.0, 0, 0], [4, 0, 0], [0, 2, 0], [0, 0, 2]])
    np.testing.assert_allclose(np.linalg.norm(normalize_vertices(v, "unit_sphere"), axis=1).max(), 1.0)
    cube = normalize_vertices(v, "unit_cube")
    np.testing.assert_allclose(cube.mean(axis=0), 0.0, atol=1e-12)
    assert np.abs(cube).max() == pytest.approx(1.0)
    np.testing.assert_array_equal(normalize_vertices(v, "none"), v)


# ---- rendering ------------------------------------------------------------------------------------


def test_views_from_different_cameras_differ(renderer):
    images = renderer.render(_asymmetric_mesh(), mate3d_rig())
    assert images.shape == (6, SIZE, SIZE, 3) and images.dtype == np.uint8
    for i in range(6):
        for j in range(i + 1, 6):
            diff = np.abs(images[i].astype(int) - images[j].astype(int)).sum(axis=-1)
            assert (diff > 30).mean() > 0.01, f"views {i} and {j} look the same"


def test_red_mesh_renders_red(renderer):
    red = _colored(trimesh.creation.icosphere(subdivisions=2), (255, 0, 0))
    images = renderer.render(red, mate3d_rig())
    for img in images.astype(int):
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        red_px = (r > 150) & (r > g + 80) & (r > b + 80)
        assert red_px.mean() > 0.3
    # the corners are white background
    assert (images[:, 0, 0] == 255).all()


def test_face_colors_and_background(renderer):
    box = trimesh.creation.box()
    box.visual.face_colors = np.tile([0, 0, 255, 255], (len(box.faces), 1))
    with Renderer(image_size=32, background="black", lighting="flat") as r:
        img = r.render(box, Camera.orbit(20, 30))
    assert img.shape == (1, 32, 32, 3)
    assert (img[0, 0, 0] == 0).all()
    centre = img[0, 16, 16]
    assert centre[2] == 255 and centre[0] == 0 and centre[1] == 0  # flat lighting keeps exact colours


def test_render_is_deterministic(renderer):
    mesh = _asymmetric_mesh()
    rig = mate3d_rig()
    a = renderer.render(mesh, rig)
    renderer.render(trimesh.creation.box(), rig)  # something else in between
    b = renderer.render(mesh, rig)
    np.testing.assert_array_equal(a, b)


def test_render_tensor(renderer):
    t = renderer.render_tensor(trimesh.creation.box(), mate3d_rig()[:2])
    assert tuple(t.shape) == (2, 3, SIZE, SIZE)
    assert t.dtype.is_floating_point and 0.0 <= float(t.min()) and float(t.max()) <= 1.0


def _no_faces():
    return trimesh.Trimesh(vertices=np.random.rand(5, 3), faces=np.zeros((0, 3), int), process=False)


def _nan_vertices():
    m = trimesh.creation.box()
    v = np.asarray(m.vertices).copy()
    v[0, 1] = np.nan
    return trimesh.Trimesh(vertices=v, faces=m.faces, process=False)


def _point_mesh():
    return trimesh.Trimesh(vertices=np.ones((3, 3)), faces=[[0, 1, 2]], process=False)


def _collinear():
    return trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0]], faces=[[0, 1, 2]], process=False)


BAD_MESHES = [
    (_no_faces, "no faces"),
    (_nan_vertices, "NaN"),
    (_point_mesh, "degenerate bounding box"),
    (_collinear, "zero surface area"),
    (lambda: "/nonexistent/mesh.glb", "cannot load"),
]


@pytest.mark.parametrize(("make", "message"), BAD_MESHES)
def test_bad_meshes_raise_clear_error(renderer, make, message):
    with pytest.raises(RenderError, match=message):
        renderer.render(make(), mate3d_rig())
    assert issubclass(RenderError, ValueError)


def test_render_many_blank_goes_on(renderer):
    rig = mate3d_rig()
    good = _colored(trimesh.creation.icosphere(subdivisions=1), (255, 0, 0))
    batch = renderer.render_many([good, _no_faces(), good, _nan_vertices()], rig, on_error="blank")
    assert batch.images.shape == (4, 6, SIZE, SIZE, 3)
    assert sorted(batch.failed) == [1, 3] and "no faces" in batch.failed[1]
    assert batch.ok.tolist() == [True, False, True, False]
    assert (batch.images[1] == 255).all()  # blank = white background
    np.testing.assert_array_equal(batch.images[0], batch.images[2])
    assert tuple(batch.to_tensor().shape) == (4, 6, 3, SIZE, SIZE)
    with pytest.raises(RenderError, match="item 1"):
        renderer.render_many([good, _no_faces()], rig, on_error="raise")


def test_renderer_reopens_after_close():
    r = Renderer(image_size=16)
    a = r.render(trimesh.creation.box(), mate3d_rig()[:1])
    r.close()
    b = r.render(trimesh.creation.box(), mate3d_rig()[:1])
    r.close()
    np.testing.assert_array_equal(a, b)


def test_invalid_options():
    with pytest.raises(ValueError, match="backend"):
        Renderer(backend="blender")
    with pytest.raises(ValueError, match="normalize"):
        Renderer(normalize="unit_box")
    with pytest.raises(ValueError, match="on_error"):
        Renderer().render_many([], mate3d_rig(), on_error="skip")
    with pytest.raises(ValueError, match="normalize"):
        CameraRig("x", mate3d_rig().cameras, normalize="bad")


# ---- contact sheet --------------------------------------------------------------------------------


def test_contact_sheet_grid():
    imgs = [np.full((20, 30, 3), i * 40, np.uint8) for i in range(5)]
    sheet = contact_sheet(imgs, [f"view {i}" for i in range(5)], cols=3, pad=2)
    assert sheet.mode == "RGB"
    w, h = sheet.size
    assert w == 2 + 3 * (30 + 2) and h > 2 * (20 + 2)
    arr = np.asarray(sheet)
    assert (arr[2 + 10, 2 + 15] == 0).all()  # first cell is the black image
    bare = contact_sheet(np.stack(imgs), None, cols=5, pad=0)
    assert bare.size == (150, 20)
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(imgs, ["a"])


def test_render_from_glb_path_keeps_vertex_colors(renderer, tmp_path):
    path = tmp_path / "red.glb"
    _colored(trimesh.creation.icosphere(subdivisions=2), (255, 0, 0)).export(path)
    img = renderer.render(path, mate3d_rig()[:1])[0].astype(int)
    assert ((img[..., 0] > 150) & (img[..., 1] < 80)).mean() > 0.3


def test_default_renderer_is_cached():
    from debias3d.render import close_default_renderers, default_renderer

    a = default_renderer(image_size=16)
    assert default_renderer(image_size=16) is a and default_renderer(image_size=32) is not a
    close_default_renderers()
