"""debias3d.render."""
