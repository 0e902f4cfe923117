"""Write Kaggle's submission: python submit.py masks_dir=DIR | rle_dir=DIR (see conf/submit.yaml)."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from carvana import CarvanaError
from carvana.submission import make_submission


@hydra.main(config_path="conf", config_name="submit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    settings = OmegaConf.to_container(cfg, resolve=True)
    try:
        path = make_submission(**settings)
    except CarvanaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(path, flush=True)


if __name__ == "__main__":
    main()
