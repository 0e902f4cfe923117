"""Train one fold of the Carvana U-Net: python train.py encoder=resnet50 fold=1 (see conf/config.yaml)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from carvana import CarvanaError


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from carvana.training import train  # after Hydra parsed the command line: --help stays fast

    try:
        val_dice, ckpt, rank_zero = train(cfg, HydraConfig.get().runtime.output_dir)
    except CarvanaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as err:  # a ??? an experiment requires
        print(f"error: {str(err).splitlines()[0]}: give it on the command line", file=sys.stderr)
        sys.exit(2)
    if rank_zero:
        print(f"val_dice={val_dice:.4f} checkpoint={ckpt}", flush=True)
    return val_dice


if __name__ == "__main__":
    main()
