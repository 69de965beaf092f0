"""debias3d.models."""
