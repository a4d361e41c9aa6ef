"""mlconnect: train sequential recommenders on your own GPU box over SSH."""

__version__ = "0.1.0"
