"""Kaggle's submission, one chain: masks -> RLE rows (rle) -> rank shards streamed by predict.py (shards) -> the
gzip CSV `img,rle_mask` in sample_submission.csv's order (submit)."""

from carvana.submission.rle import rle_decode, rle_encode
from carvana.submission.submit import make_submission

__all__ = ["make_submission", "rle_decode", "rle_encode"]
