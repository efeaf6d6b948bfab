"""GAN-based visual anomaly detection (see README.md)."""

# Registers the ${ag.*} config resolvers, so composing conf/ works after any import of the
# package (train.py, tests, notebooks), not only through anomaly_gan.training.
from anomaly_gan import resolvers as _resolvers  # noqa: F401
