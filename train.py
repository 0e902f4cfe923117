"""Train one fold: python train.py encoder=resnet50 fold=1 (conf/config.yaml, --help)."""

import sys

import hydra
from omegaconf import DictConfig

from carvana.cli import entry_point
from carvana.training.rundir import data_help, restart_words


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from carvana.training.run import main as train  # after Hydra parsed the command line: --help stays fast

    return train(cfg)


if __name__ == "__main__":
    entry_point("config", groups={"data": data_help(sys.argv[1:]), "trainer": "trainer/auto"})
    sys.argv[1:] = restart_words(sys.argv[1:])  # hydra.run.dir=<an earlier run>: that run's settings
    main()
