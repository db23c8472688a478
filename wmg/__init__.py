"""wmg: weird-machine gadget spotting with small language models, compared and stored in SQLite."""
__version__ = "0.1.0"
