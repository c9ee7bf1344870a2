"""Encoders, preprocessing, the NanoCLIP fold ensemble, bundles, indexing and search."""
import os

# Before torch loads OpenMP: with busy-waiting workers, 2 threads on a 2-core machine that is doing anything
# else ran 4-30x slower than 1 thread (measured: 16 images 4.7 s vs 0.75 s; one query 1.2 s vs 0.04 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
