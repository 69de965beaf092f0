"""Reward rankers: ``score(views, prompt) -> float`` for one asset, batched over assets.

* :mod:`.base` — protocol and shared glue (packed batches, view aggregation, rendering);
* :mod:`.model` — :class:`~.model.ShapeWorldRanker` (``shapeworld``), trained by :mod:`.train`;
* :mod:`.hpsv2` — :class:`~.hpsv2.HPSv2Ranker` (``hpsv2``, extra ``debias3d[hpsv2]``);
* :mod:`.t3bench` — T3Bench's icosphere quality aggregation over any ranker.
"""
