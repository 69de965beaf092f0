"""Data: prompt sets, pair datasets, mesh I/O and the ShapeWorld procedural world."""
