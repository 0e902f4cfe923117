"""Write full-resolution masks for a folder of photos: python predict.py ckpt=PATH (see conf/predict.yaml)."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from carvana import CarvanaError


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from carvana.prediction import run  # after Hydra parsed the command line: --help stays fast

    try:
        line, status = run(OmegaConf.to_container(cfg, resolve=True))
    except CarvanaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if line:
        print(line, flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
