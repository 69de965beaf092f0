"""Benchmark: off-screen views/second with one reused plotter vs. a new plotter per view.

    python benchmarks/render.py --views 200 --size 224 --json benchmarks/results/render.json

Cases (same process, same mesh, same cameras):

* ``reuse``: one :class:`debias3d.render.Renderer`, mesh set once, ``--views`` camera moves.
* ``reuse+mesh``: one renderer, the mesh re-uploaded every 6 views (``render_many`` over a MATE-3D
  rig), which is how audits use it.
* ``new-plotter``: the baseline, a fresh renderer (plotter + GL context) for every view.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np


def make_mesh(subdivisions: int):
    """A vertex-coloured, vase-like mesh: an icosphere squashed and bulged along z."""
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = np.asarray(mesh.vertices).copy()
    v[:, :2] *= (1.0 + 0.35 * np.sin(3.0 * v[:, 2]))[:, None]
    v[:, 2] *= 1.6
    mesh = trimesh.Trimesh(vertices=v, faces=mesh.faces, process=False)
    rgb = np.clip((v - v.min(0)) / np.ptp(v, axis=0) * 255, 0, 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(v), 1), 255, np.uint8)], axis=1)
    return mesh


def orbit_cameras(n: int):
    from debias3d.render import Camera

    # a spiral so that consecutive views differ in azimuth and elevation
    return [Camera.orbit(-60 + 120 * i / max(n - 1, 1), 137.5 * i, 2.0, math.pi / 3) for i in range(n)]


def bench_reuse(mesh, cams, size: int) -> dict:
    from debias3d.render import Renderer

    t0 = time.perf_counter()
    with Renderer(image_size=size) as r:
        r.render(mesh, cams[:1])  # builds the plotter
        t1 = time.perf_counter()
        images = r.render(mesh, cams)
        t2 = time.perf_counter()
    distinct = len({img.tobytes() for img in images})
    return {"views": len(cams), "seconds": t2 - t1, "startup_s": t1 - t0, "distinct_images": distinct}


def bench_reuse_mesh(mesh, n_views: int, size: int) -> dict:
    from debias3d.render import Renderer, mate3d_rig

    rig = mate3d_rig()
    n_meshes = max(1, n_views // len(rig))
    with Renderer(image_size=size) as r:
        r.render(mesh, rig[:1])
        t1 = time.perf_counter()
        batch = r.render_many([mesh] * n_meshes, rig)
        t2 = time.perf_counter()
    return {"views": n_meshes * len(rig), "seconds": t2 - t1, "meshes": n_meshes, "failed": len(batch.failed)}


def bench_new_plotter(mesh, cams, size: int) -> dict:
    from debias3d.render import Renderer

    t1 = time.perf_counter()
    for cam in cams:
        with Renderer(image_size=size) as r:
            r.render(mesh, [cam])
    t2 = time.perf_counter()
    return {"views": len(cams), "seconds": t2 - t1}


def main(args: argparse.Namespace) -> dict:
    import pyvista as pv

    from debias3d.render import configure_headless

    configure_headless()
    mesh = make_mesh(args.subdivisions)
    cams = orbit_cameras(args.views)
    results = {
        "reuse": bench_reuse(mesh, cams, args.size),
        "reuse+mesh": bench_reuse_mesh(mesh, args.views, args.size),
        "new-plotter": bench_new_plotter(mesh, cams[: args.baseline_views], args.size),
    }
    for res in results.values():
        res["views_per_s"] = res["views"] / res["seconds"]
    speedup = results["reuse"]["views_per_s"] / results["new-plotter"]["views_per_s"]
    report = {
        "image_size": args.size,
        "mesh_faces": len(mesh.faces),
        "mesh_vertices": len(mesh.vertices),
        "results": results,
        "speedup_reuse_vs_new_plotter": speedup,
        "env": {
            "python": platform.python_version(),
            "pyvista": pv.__version__,
            "vtk": pv.vtk_version_info,
            "cpu_count": os.cpu_count(),
            "VTK_DEFAULT_OPENGL_WINDOW": os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"),
        },
    }
    print(f"mesh: {len(mesh.faces)} faces, {args.size}px")
    print(f"{'case':<14}{'views':>7}{'seconds':>10}{'views/s':>10}")
    for name, res in results.items():
        print(f"{name:<14}{res['views']:>7}{res['seconds']:>10.2f}{res['views_per_s']:>10.1f}")
    print(f"plotter start-up: {results['reuse']['startup_s']:.2f}s; speed-up reuse/new: {speedup:.1f}x")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        report["env"]["vtk"] = list(report["env"]["vtk"])
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return report


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=200, help="views for the reused-plotter cases")
    p.add_argument("--baseline-views", type=int, default=20, help="views for the new-plotter baseline")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--subdivisions", type=int, default=4, help="icosphere subdivisions (4 → 5120 faces)")
    p.add_argument("--json", type=str, default=None, help="write results as JSON to this path")
    return p


if __name__ == "__main__":
    main(make_parser().parse_args())
