"""debias3d: audit text-to-3D generators for word-level semantic bias and repair it with data.

Heavy dependencies (torch, transformers, pyvista) are imported lazily inside the modules that
need them, so ``import debias3d`` and ``debias3d --help`` stay fast.
"""

__version__ = "0.1.0"
