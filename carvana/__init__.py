"""carvana: pixel-precise binary segmentation of large photos (Carvana Image Masking, 4th-place recipe)."""


class CarvanaError(Exception):
    """An expected user error (bad path, missing file, wrong size): printed as one line, no traceback."""
