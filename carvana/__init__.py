"""carvana: pixel-precise binary segmentation of large photos (Carvana Image Masking, 4th-place recipe)."""


class CarvanaError(Exception):
    """An expected user error (bad path, missing file, wrong size): printed as one line, no traceback."""


def __getattr__(name: str) -> object:
    """carvana.Segmenter (the Python API), imported when first asked for: `import carvana` stays light (no torch)."""
    if name == "Segmenter":
        from carvana.predict.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'carvana' has no attribute {name!r}")
