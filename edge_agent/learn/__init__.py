"""Fleet learning on the gateway (issue 11): local training of the float weights, deltas.

Device side only: numpy and cryptography, never TensorFlow or scikit-learn.
``weights`` holds the typed weight set, ``dense`` the numpy forward/backward/Adam of the
``dense`` autoencoder kind (the only kind trainable on the device), ``local`` the bounded
local training run, ``history`` rows -> the pipeline's normalized windows, ``bundle_weights``
the loader of a bundle's ``train_weights.npz`` and ``delta`` the compressed, signed update
sent upstream.
"""
