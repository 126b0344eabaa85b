from d2ssl.losses.nce import NCELossWithMemory
from d2ssl.losses.supcon import SupConLoss, supcon_loss

__all__ = ["NCELossWithMemory", "SupConLoss", "supcon_loss"]
