"""The package version (a leaf module: the subpackages record it without importing the package's door)."""

__version__ = "0.1.0"
