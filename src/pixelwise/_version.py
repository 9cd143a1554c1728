"""The package version, in a module of its own so that code inside pixelwise never imports the root package."""

__version__ = "0.2.0"
