"""Where training leans on Lightning's and Hydra's internals, one module per framework: each workaround names the
upstream issue and the version it was checked against, and tests/test_framework_contracts.py fails, saying what to
do, when an upgrade changes what it relies on or does the job itself. (One more lives where its data does:
AugmentSampler in carvana/data/dataset.py ignores Lightning's set_epoch, Lightning #21938; carvana.data imports
nothing of training.)"""
