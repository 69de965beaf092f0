"""debias3d.models.backbone."""
