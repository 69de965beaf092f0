"""debias3d.augment."""
