"""Small detection sets built from real images: Fashion-MNIST objects pasted on scikit-image photographs.

Each object is a Fashion-MNIST image, thresholded into a mask, scaled with nearest-neighbour
interpolation, tinted with a random colour and pasted where it overlaps no other object, so its
mask and box are exact. The set is written in one of the two layouts detectron2 reads itself:

- ``coco``: ``images/<split>/<id>.jpg`` and ``annotations/instances_<split>.json`` (boxes, areas,
  RLE masks), for ``register_coco_instances`` and ``COCOEvaluator``;
- ``voc``: ``JPEGImages/``, ``Annotations/*.xml`` (1-based inclusive pixel boxes, as Pascal VOC) and
  ``ImageSets/Main/<split>.txt``, for ``register_pascal_voc`` and ``PascalVOCDetectionEvaluator``.

Used by the tests and the demo to fine-tune and evaluate detectors on the CPU; ``pasted_detection_set``
is the config-friendly entry point (creates the set once, registers it, returns its name).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from d2ssl.data.datasets import FASHION_MNIST_CLASSES, get_dataset_dicts

# scikit-image sample photographs that ship with the package (no download).
BACKGROUND_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "hubble_deep_field",
    "immunohistochemistry", "grass", "gravel", "brick", "clock", "retina",
)
# Fashion-MNIST pixels above this are object; its backgrounds are 0 with faint anti-aliasing.
MASK_THRESHOLD = 24
FORMATS = ("coco", "voc")


@dataclass(frozen=True)
class PastedDetectionSet:
    """Where a generated set lies and what it holds."""

    root: str
    split: str
    format: str
    class_names: tuple[str, ...]
    num_images: int

    @property
    def json_file(self) -> str:
        return os.path.join(self.root, "annotations", f"instances_{self.split}.json")

    @property
    def image_root(self) -> str:
        if self.format == "coco":
            return os.path.join(self.root, "images", self.split)
        return os.path.join(self.root, "JPEGImages")


def class_name(label: int) -> str:
    # "t-shirt/top" would become a sub-folder in the VOC evaluator's per-class result files.
    return FASHION_MNIST_CLASSES[label].replace("/", "_")


@lru_cache(maxsize=1)
def _background_photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    photos = []
    for name in BACKGROUND_PHOTOS:
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(photo[:, :, :3]).astype(np.uint8))
    return tuple(photos)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    photos = _background_photos()
    photo = Image.fromarray(photos[int(rng.integers(len(photos)))])
    # Scale so the crop covers between all and a quarter of the photo's shorter side.
    cover = max(height / photo.height, width / photo.width)
    scale = cover * rng.uniform(1.0, 2.0)
    photo = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))),
                         Image.BILINEAR)
    y0 = int(rng.integers(photo.height - height + 1))
    x0 = int(rng.integers(photo.width - width + 1))
    return np.array(photo)[y0:y0 + height, x0:x0 + width].copy()


def _object(image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(intensity, mask)`` of a Fashion-MNIST image scaled by ``scale``, cropped to its mask."""
    size = max(1, round(image.shape[0] * scale))
    big = np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST))
    mask = big > MASK_THRESHOLD
    ys, xs = np.nonzero(mask)
    rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    return big[rows, cols], mask[rows, cols]


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int = 2) -> bool:
    x0, y0, w, h = box
    return any(x0 < ox + ow + gap and ox < x0 + w + gap and y0 < oy + oh + gap and oy < y0 + h + gap
               for ox, oy, ow, oh in others)


def _render(
    rng: np.random.Generator, objects: list[dict], by_class: dict[int, np.ndarray], labels: Sequence[int],
    image_size: tuple[int, int], objects_per_image: tuple[int, int], scale_range: tuple[float, float],
) -> tuple[np.ndarray, list[dict]]:
    height, width = image_size
    image = _background(rng, height, width)
    placed: list[dict] = []
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        label = int(labels[int(rng.integers(len(labels)))])
        source = objects[int(rng.choice(by_class[label]))]["image"]
        intensity, mask = _object(source, rng.uniform(*scale_range))
        h, w = mask.shape
        if h > height or w > width:
            continue
        for _attempt in range(20):
            x0, y0 = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
            if not _overlaps((x0, y0, w, h), [o["box"] for o in placed]):
                break
        else:
            continue  # no free spot: fewer objects in this image
        colour = rng.uniform(0.4, 1.0, size=3)
        region = image[y0:y0 + h, x0:x0 + w]
        region[mask] = np.clip(intensity[mask, None] * colour[None, :], 0, 255).astype(np.uint8)
        full = np.zeros((height, width), dtype=bool)
        full[y0:y0 + h, x0:x0 + w] = mask
        placed.append({"label": label, "box": (x0, y0, w, h), "mask": full})
    return image, placed


def make_pasted_detection_set(
    out_dir: str,
    num_images: int,
    format: str = "coco",
    seed: int = 0,
    split: str = "train",
    image_size: tuple[int, int] = (160, 160),
    objects_per_image: tuple[int, int] = (1, 3),
    scale_range: tuple[float, float] = (1.5, 3.0),
    classes: Sequence[int] | None = None,
    object_split: str = "train",
) -> PastedDetectionSet:
    """Writes ``num_images`` images with their annotations under ``out_dir`` (see the module docstring).

    Args:
        format: ``"coco"`` or ``"voc"``; several splits can share one ``out_dir``.
        seed: everything (backgrounds, crops, objects, positions, colours) follows from it.
        image_size: ``(height, width)`` of every image.
        objects_per_image: inclusive range of the number of objects tried per image.
        scale_range: objects (28 px in Fashion-MNIST) are scaled by a factor drawn from this range.
        classes: Fashion-MNIST labels to use (default all 10); category ``i`` of the set is ``classes[i]``.
        object_split: which Fashion-MNIST split the objects come from (``train`` or ``test``).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    # detectron2 reads VOC image lists with np.loadtxt, which returns a 0-d array for one line.
    least = 2 if format == "voc" else 1
    if num_images < least:
        raise ValueError(f"num_images must be at least {least} for {format}, got {num_images}")
    labels = list(range(len(FASHION_MNIST_CLASSES)) if classes is None else classes)
    objects = get_dataset_dicts(f"fashion_mnist_{object_split}")
    all_labels = np.array([d["label"] for d in objects])
    by_class = {c: np.flatnonzero(all_labels == c) for c in labels}
    dataset = PastedDetectionSet(out_dir, split, format, tuple(class_name(c) for c in labels), num_images)
    rng = np.random.default_rng(seed)
    PathManager.mkdirs(dataset.image_root)
    records = []
    for i in range(num_images):
        image, placed = _render(rng, objects, by_class, labels, image_size, objects_per_image, scale_range)
        file_id = f"{split}_{i:06d}"
        with PathManager.open(os.path.join(dataset.image_root, file_id + ".jpg"), "wb") as f:
            Image.fromarray(image).save(f, format="JPEG", quality=95)
        records.append((file_id, placed))
    (_write_coco if format == "coco" else _write_voc)(dataset, records, labels, image_size)
    return dataset


def _write_coco(dataset: PastedDetectionSet, records, labels: Sequence[int], image_size) -> None:
    from pycocotools import mask as mask_util

    height, width = image_size
    images, annotations = [], []
    for image_id, (file_id, placed) in enumerate(records):
        images.append({"id": image_id, "file_name": file_id + ".jpg", "height": height, "width": width})
        for obj in placed:
            rle = mask_util.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": labels.index(obj["label"]) + 1,
                "bbox": [float(v) for v in obj["box"]], "area": float(obj["mask"].sum()),
                "iscrowd": 0, "segmentation": rle,
            })
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.class_names)]
    PathManager.mkdirs(os.path.dirname(dataset.json_file))
    with PathManager.open(dataset.json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _write_voc(dataset: PastedDetectionSet, records, labels: Sequence[int], image_size) -> None:
    height, width = image_size
    for sub in ("Annotations", os.path.join("ImageSets", "Main")):
        PathManager.mkdirs(os.path.join(dataset.root, sub))
    for file_id, placed in records:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = file_id + ".jpg"
        size = ET.SubElement(root, "size")
        for key, value in (("width", width), ("height", height), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for obj in placed:
            node = ET.SubElement(root, "object")
            ET.SubElement(node, "name").text = class_name(obj["label"])
            for key, value in (("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
                ET.SubElement(node, key).text = value
            x0, y0, w, h = obj["box"]
            box = ET.SubElement(node, "bndbox")
            # VOC boxes are 1-based inclusive pixel indices; detectron2 subtracts 1 from xmin/ymin.
            for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x0 + w), ("ymax", y0 + h)):
                ET.SubElement(box, key).text = str(value)
        with PathManager.open(os.path.join(dataset.root, "Annotations", file_id + ".xml"), "wb") as f:
            ET.ElementTree(root).write(f)
    with PathManager.open(os.path.join(dataset.root, "ImageSets", "Main", dataset.split + ".txt"), "w") as f:
        f.write("".join(file_id + "\n" for file_id, _ in records))


def register_pasted_detection_set(name: str, dataset: PastedDetectionSet) -> str:
    """Registers ``dataset`` as ``name`` the standard detectron2 way; returns ``name``.

    A name already registered for the same files is left as is; for other files it is an error.
    """
    where = dataset.json_file if dataset.format == "coco" else os.path.join(dataset.root, dataset.split)
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name).get("pasted_detection_set")
        if registered != where:
            raise ValueError(
                f"data set {name!r} is already registered for {registered or 'other data'}, not {where}"
            )
        return name
    if dataset.format == "coco":
        from detectron2.data.datasets import register_coco_instances

        register_coco_instances(name, {}, dataset.json_file, dataset.image_root)
    else:
        from detectron2.data.datasets import register_pascal_voc

        # year 2007: the VOC evaluator then uses the VOC2007 11-point AP, as the VOC07 benchmarks.
        register_pascal_voc(name, dataset.root, dataset.split, 2007, list(dataset.class_names))
    MetadataCatalog.get(name).set(pasted_detection_set=where, thing_classes=list(dataset.class_names))
    return name


def pasted_detection_set(name: str, root: str, num_images: int, format: str = "coco", seed: int = 0,
                         split: str = "train", **kwargs) -> str:
    """Creates the set under ``root`` unless the same one is already there, registers it as ``name``
    and returns ``name``: use it in configs where a data set name is expected. Other arguments are
    those of ``make_pasted_detection_set``."""
    # A JSON round trip turns tuples and OmegaConf lists into plain lists, as stored in the marker.
    params = json.loads(json.dumps(
        dict(num_images=num_images, format=format, seed=seed, split=split, **kwargs), default=list))
    marker = os.path.join(root, f"pasted_{split}.json")
    if comm.is_main_process():
        existing = None
        if PathManager.exists(marker):
            with PathManager.open(marker) as f:
                existing = json.load(f)
        if existing is None or existing.get("params") != params:
            dataset = make_pasted_detection_set(root, **params)
            with PathManager.open(marker, "w") as f:
                json.dump({"params": params, "dataset": asdict(dataset)}, f)
    comm.synchronize()
    with PathManager.open(marker) as f:
        dataset = json.load(f)["dataset"]
    dataset["class_names"] = tuple(dataset["class_names"])
    return register_pasted_detection_set(name, PastedDetectionSet(**dataset))
