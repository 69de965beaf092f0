"""debias3d.bias_audit."""
