from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import do_train, setup_config

__all__ = ["AtomicCheckpointer", "do_train", "setup_config"]
