"""Small building blocks shared by every algorithm: MLPs, the ensemble layer, normalisers."""
from offmarl.nn.layers import EnsembleLinear, EnsembleMLP, Standardiser, mlp

__all__ = ["EnsembleLinear", "EnsembleMLP", "Standardiser", "mlp"]
