"""ltemlive: live phase reconstruction and defocus feedback for Lorentz TEM.

Units are SI everywhere inside the package (m, rad, V, T). Sign conventions are in
docs/conventions.md and are tested in tests/test_optics_physics.py.
"""

__version__ = "0.1.0"
