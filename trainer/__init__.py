"""Trainer: the desk half. Learns the two-stage detector from sensor history.

Imports TensorFlow and scikit-learn, so it never runs on a gateway; its numeric kernels
(windows, features, forest scoring) come from ``edge_agent`` so both sides compute the same.
"""
