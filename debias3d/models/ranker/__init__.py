"""debias3d.models.ranker."""
