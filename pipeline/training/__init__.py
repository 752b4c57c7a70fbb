"""Training, cross-validation and evaluation of the segmentation network (only `segnode train/predict/evaluate/cv` import this)."""
