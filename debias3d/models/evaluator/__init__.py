"""Quality evaluators (HyperScore-style, 4 dimensions): ``q̂_i = ψ(F(x, t) | π(f_c^i))``.

* :mod:`.model` — :class:`~.model.ShapeWorldHyperScore` (``shapeworld-hyperscore``, embedded default)
  and the shared scoring API (``score``, ``score_from_embeddings``, ``prepare_views``, ``evaluate``);
* :mod:`.clip` — :class:`~.clip.CLIPHyperScore` (``hyperscore-clip``) + checkpoint conversion;
* :mod:`.views` — render cache and per-item errors; :mod:`.layers` — building blocks;
* :mod:`.data` / :mod:`.train` — ShapeWorld ratings and the 5-fold training protocol.

Submodules import torch; this package file does not, so the CLI stays fast.
"""
