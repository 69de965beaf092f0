"""debias3d.models.llm."""
