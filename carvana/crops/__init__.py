"""python -m carvana.crops: bboxes.csv of the cars in predicted probabilities (__main__.py; the boxes themselves:
carvana.data.boxes)."""
