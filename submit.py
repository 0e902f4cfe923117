"""Write Kaggle's submission: python submit.py [probs_dir=DIR | rle_dir=DIR] (conf/submit.yaml, --help)."""

import hydra
from omegaconf import DictConfig, OmegaConf

from carvana.cli import entry_point


@hydra.main(config_path="conf", config_name="submit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from carvana.submission import main as submit  # after Hydra parsed the command line: --help stays fast

    submit(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    entry_point("submit", renamed={"masks_dir": "probs_dir"})
    main()
