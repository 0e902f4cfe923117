"""python -m carvana.export: a checkpoint's network as ONNX (format=onnx) or in segmentation_models_pytorch's own
format (format=smp), checked against PyTorch on a photo before it is put in place (conf/export.yaml; the work:
carvana.export.exporter)."""

import sys

from carvana import CarvanaError
from carvana.cli import compose, run_or_exit
from carvana.export.exporter import MAX_LOGIT_DIFF, MAX_MASK_DIFF, MAX_PROB_DIFF, export


def main(argv: list[str] | None = None) -> None:
    """Export and check; print the figures and the file; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, dict]:
        cfg = compose("export", words)
        for key in ("ckpt", "output"):
            if not cfg[key]:
                raise CarvanaError(f"{key}= is required: python -m carvana.export ckpt=last.ckpt output=model.onnx")
        return cfg, export(cfg["ckpt"], cfg["output"], cfg["photo"], cfg["format"])

    cfg, figures = run_or_exit(sys.argv[1:] if argv is None else argv, "export", work)
    if cfg["format"] == "smp":
        print(f"parity on {figures['photo']}: max_logit_diff={figures['max_logit_diff']:.2e} (limit {MAX_LOGIT_DIFF})")
        print(f"smp={cfg['output']} input={figures['input']} (preprocessing and geometry: carvana.json) -> logits",
              flush=True)
        return
    print(f"parity on {figures['photo']} at {figures['sizes']} (height x width): "
          f"max_prob_diff={figures['max_prob_diff']:.2e} (limit {MAX_PROB_DIFF}) "
          f"mask_diff_share={figures['mask_diff_share']:.2e} (limit {MAX_MASK_DIFF})")
    sides = " (H, W: any multiples of 32)" if "xHxW" in figures["input"] else ""
    print(f"onnx={cfg['output']} image={figures['input']} uint8{sides} -> logits, probs", flush=True)


if __name__ == "__main__":
    main()
