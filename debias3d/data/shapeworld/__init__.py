"""debias3d.data.shapeworld."""
