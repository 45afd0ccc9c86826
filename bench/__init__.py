"""TransferBench: rank surrogate models by the transferability of their adversarial examples."""

__version__ = "0.1.0"
