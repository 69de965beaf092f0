"""debias3d.models.evaluator."""
