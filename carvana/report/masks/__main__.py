"""python -m carvana.report.masks: a COCO file's masks (carvana.data.coco) written as one black-and-white PNG per photo
(conf/masks.yaml), for the report's masks_dir= or data=folder."""

import sys
from pathlib import Path

from carvana import CarvanaError
from carvana.cli import compose, run_or_exit
from carvana.data.coco import write_masks


def main(argv: list[str] | None = None) -> None:
    """Write the masks and print their count and folder; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, int]:
        cfg = compose("masks", words)
        missing = [key for key in ("root", "annotations", "output_dir") if cfg[key] is None]
        if missing:
            raise CarvanaError(f"{missing[0]}= is required: python -m carvana.report.masks root=DIR "
                               "annotations=<COCO JSON> output_dir=DIR/masks")
        categories = cfg["categories"]
        categories = [categories] if isinstance(categories, (str, int)) else categories
        return cfg, write_masks(cfg["root"], cfg["annotations"], categories, cfg["output_dir"])

    cfg, count = run_or_exit(sys.argv[1:] if argv is None else argv, "masks", work, "python -m carvana.report.masks")
    print(f"masks={count} output_dir={Path(cfg['output_dir'])}", flush=True)


if __name__ == "__main__":
    main()
