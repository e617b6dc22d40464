"""crackseg: pixel-wise crack segmentation and measurement."""

__version__ = "0.1.0"

__all__ = ["CrackSegmenter", "__version__"]


def __getattr__(name):
    # Imported lazily so `import crackseg` stays light for the CLI's argument parsing.
    if name == "CrackSegmenter":
        from crackseg.inference import CrackSegmenter

        return CrackSegmenter
    raise AttributeError(name)
