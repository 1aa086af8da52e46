"""bigmodel: a config-driven command line tool for training and using neural models."""

__version__ = "0.1.0"
