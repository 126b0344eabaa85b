from d2ssl.data import datasets  # noqa: F401  (registers the built-in data sets)
from d2ssl.data.build import build_ssl_train_loader
from d2ssl.data.datasets import get_dataset_dicts, register_image_folder, register_image_list

__all__ = [
    "build_ssl_train_loader",
    "get_dataset_dicts",
    "register_image_folder",
    "register_image_list",
]
