"""python -m carvana.serve: predict.py's masks over HTTP (FastAPI + uvicorn, the [serve] extra), requests batched on
the device by one model thread, and a page to try it in a browser (conf/serve.yaml)."""
