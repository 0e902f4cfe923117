"""python -m carvana.folds: folds.csv of Carvana's cars (__main__.py; the folds themselves: carvana.data.kfold)."""
