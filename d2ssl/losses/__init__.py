from d2ssl.losses.nce import NCELossWithMemory

__all__ = ["NCELossWithMemory"]
