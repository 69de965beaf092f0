"""debias3d.bias_audit: localize → quantize word-level bias, reports, view contradictions.

Import the submodules directly (they import torch):

* :mod:`.attribute` — :class:`GradientAttribution` (grad, grad×input, integrated gradients),
  :func:`attribute_prompts` → :class:`TokenAttributionResult`;
* :mod:`.words` — tokens → words, w_h / w_l, the global word table, deletion test, ground truth;
* :mod:`.localize` — D samples per prompt, q_l / q_g;
* :mod:`.prompt_debias` — D-SDS PMI view contradictions;
* :mod:`.report` — heatmaps and report.html;
* :mod:`.pipeline` — :func:`run_audit`; :mod:`.cli` — ``audit_command`` / ``heatmap_command``.
"""
