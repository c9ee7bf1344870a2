"""Datasets, folds, augmentation, loss and the trainer; imported only by `kger train` and benchmarks."""
import retrieval  # noqa: F401  (sets the OpenMP wait policy before torch loads)
