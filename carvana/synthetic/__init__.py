"""A synthetic data set in Carvana's exact layout: a low-poly car on a studio turntable, 16 angles, masks and csvs.

Imported only when the synthetic data is asked for (data=synthetic, the demo, the tests).
"""

from carvana.synthetic.dataset import is_complete, make_dataset

__all__ = ["is_complete", "make_dataset"]
