"""Write full-size masks for a folder of photos: python predict.py ckpt=PATH (conf/predict.yaml, --help)."""

import hydra
from omegaconf import DictConfig, OmegaConf

from carvana.cli import entry_point


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from carvana.predict.run import main as predict  # after Hydra parsed the command line: --help stays fast

    predict(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    entry_point("predict")
    main()
