"""Edge agent: the gateway half of the product.

Everything under this package runs on a Raspberry Pi or Jetson beside the machine and so may
import only what the ``edge`` extra installs (numpy, numba, a TFLite interpreter, pymodbus,
pyserial, paho-mqtt). The desktop ``trainer`` imports its kernels from here so that training and
inference share one implementation.
"""

__version__ = "0.1.0"
