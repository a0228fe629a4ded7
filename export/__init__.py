"""Export: from a trainer run directory to a signed, versioned model bundle for the gateway.

Backends, one module each: ``tflite_int8`` (what every gateway runs), ``edgetpu`` (Coral) and
``onnx_tensorrt`` (Jetson). ``bundle`` packs and signs; ``keys`` makes the signing key pair.
"""
