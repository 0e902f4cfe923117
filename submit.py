"""Write Kaggle's submission: python submit.py [masks_dir=DIR | rle_dir=DIR] (see conf/submit.yaml)."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from carvana import CarvanaError
from carvana.submission.submit import find_predictions, make_submission

PREDICT_OUTPUT = "predictions/test"  # predict.py's default output_dir (conf/predict.yaml)


@hydra.main(config_path="conf", config_name="submit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    settings = OmegaConf.to_container(cfg, resolve=True)
    try:
        if settings["masks_dir"] is None and settings["rle_dir"] is None:
            found = find_predictions(PREDICT_OUTPUT)
            kind = "RLE shards" if "rle_dir" in found else "PNG masks"
            print(f"reading the {kind} in {PREDICT_OUTPUT} (predict.py's default output_dir)", file=sys.stderr)
            settings.update(found)
        path = make_submission(**settings)
    except CarvanaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(path, flush=True)


if __name__ == "__main__":
    main()
