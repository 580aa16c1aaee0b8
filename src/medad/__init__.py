"""medad: unsupervised anomaly detection in medical screening images."""

__version__ = "0.1.0"
