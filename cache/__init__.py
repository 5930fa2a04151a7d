"""The feature cache: the only code that opens HDF5 (format in docs/cache-format.md)."""
