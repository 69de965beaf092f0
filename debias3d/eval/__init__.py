"""debias3d.eval: before/after evaluation and reports.

Modules (imported on demand; this package file imports nothing heavy, so the CLI stays fast):

* :mod:`.config`     ``EvalConfig`` (``configs/shapeworld/eval.yaml``)
* :mod:`.pipeline`   ``run_eval`` / ``eval_command``: generate once per model, then the tables below
* :mod:`.benchmarks` MATE-3D-style (8 categories x 4 dimensions) and T3Bench-style tables
* :mod:`.fidelity`   ShapeWorld ground truth per word / category (``debias3d world fidelity``)
* :mod:`.stats`      bootstrap CIs, the neglected-vs-rest word split
* :mod:`.diversity`  mean pairwise Chamfer distance of a prompt's samples
* :mod:`.compare`    ``debias3d eval compare A/ B/``
* :mod:`.report`     self-contained HTML (eval report, demo report)

The whole loop (``debias3d demo``) lives in :mod:`debias3d.demo`, its ablations (one loop per
augmentation strategy, same budget; the ablation table) in :mod:`debias3d.demo_ablations`.
"""
