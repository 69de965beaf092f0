"""debias3d.finetune."""
