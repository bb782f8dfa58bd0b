"""Reading and writing series and results (HDF5, TIFF + YAML sidecar, other formats via RosettaSciIO)."""

from ltemlive.storage.series_io import read_series, write_series_h5, write_series_tiff

__all__ = ["read_series", "write_series_h5", "write_series_tiff"]
