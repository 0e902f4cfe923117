"""Kaggle's submission, one chain: masks -> RLE rows (rle) -> rank shards streamed by predict.py (shards) -> the
gzip CSV `img,rle_mask` in sample_submission.csv's order (submit: make_submission)."""
