"""Evaluation of pretrained trunks: feature extraction, kNN, linear benchmarks, sweeps, clustering."""
