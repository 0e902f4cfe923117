"""python -m carvana.report.masks: a COCO file's masks as one PNG per photo, for the report's masks_dir=
(__main__.py; the writer: carvana.data.coco.write_masks)."""
