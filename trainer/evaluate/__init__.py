"""Offline evaluation of a trained detector: the last step of the desktop trainer pipeline.

After the trainer has fitted the Isolation Forest screen and the autoencoder and chosen a
threshold, this package measures how well the pair works on labelled test data
(:mod:`trainer.evaluate.metrics`), compares it with classic unsupervised detectors trained on the
same features (:mod:`trainer.evaluate.baselines`) and writes a self-contained HTML report with
plots for a person to review before a bundle is exported to a gateway
(:mod:`trainer.evaluate.report`). Nothing here runs on the edge device.
"""
