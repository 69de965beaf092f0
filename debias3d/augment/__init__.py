"""debias3d.augment: semantic + visual augmentation of an audit (paper §3.3, Algorithm 1).

Modules (imported on demand; importing this package is cheap):

* :mod:`.config`    ``AugmentConfig`` with ``llm`` / ``filter`` / ``visual`` sub-configs
* :mod:`.semantic`  kept-word strategies (both / only_wh / only_wl / random_words)
* :mod:`.filters`   automatic filter with reasons, acceptance rate, diversity
* :mod:`.visual`    external generators (shapeworld / generator / command), ranker duel, pairs
* :mod:`.job`       resumable job runner (content-keyed items, JSONL records, atomic writes)
* :mod:`.pipeline`  ``run_augment``, ``augment_status``, ``augment_command``, ``status_command``
* :mod:`.report`    self-contained ``report.html``
* ``debias3d augment`` / ``accelerate launch -m debias3d augment``: the entry point
"""
