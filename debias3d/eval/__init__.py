"""debias3d.eval."""
