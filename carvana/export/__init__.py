"""python -m carvana.export: a checkpoint as ONNX or in smp's format, checked against PyTorch (__main__.py; the
export and its checks: exporter.py)."""
