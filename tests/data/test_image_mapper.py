import torch
from detectron2.config import instantiate
from PIL import Image
from torchvision import transforms as T

from d2ssl.data.mappers import ImageMapper
from d2ssl.data.resize import to_normalized_tensor


def test_image_id_and_label_are_carried(fashion_mnist_small):
    mapper = ImageMapper([T.RandomResizedCrop(32)])
    d = fashion_mnist_small[123]
    out = mapper(dict(d), torch.Generator().manual_seed(0))
    assert out["image_id"] == 123 and out["label"] == d["label"]
    assert out["image"].shape == (3, 32, 32)
    assert "label" not in mapper({"image": d["image"], "image_id": 5}, torch.Generator())


def test_transforms_run_in_order_then_normalisation(fashion_mnist_small):
    d = fashion_mnist_small[0]
    out = ImageMapper([T.Resize(40), T.CenterCrop(20)])(dict(d), torch.Generator())
    photo = Image.fromarray(d["image"]).convert("RGB")
    expected = to_normalized_tensor(T.CenterCrop(20)(T.Resize(40)(photo)))
    assert torch.equal(out["image"], expected)


def test_views_are_a_function_of_the_generator(tiny_config, fashion_mnist_small):
    mapper = instantiate(tiny_config("npid").dataloader.train.mapper)
    d = fashion_mnist_small[3]
    a, b, c = (mapper(dict(d), torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 32, 32) and a["image_id"] == 3
