"""The feature cache's key, byte for byte (benchmarks/mutation.py): the digests are recomputed here with
hashlib over records assembled by hand (tag, 8-byte little-endian length, payload), the view's text is
written out, and the reason a cache is refused is spelled out."""

import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from d2ssl.evaluation.features import (
    _changes,
    _reusable,
    array_digest,
    dataset_digest,
    view_description,
    weights_digest,
)


def rec(tag: bytes, payload: bytes) -> bytes:
    return tag + len(payload).to_bytes(8, "little") + payload


def sha(*records: bytes) -> str:
    return hashlib.sha256(b"".join(records)).hexdigest()


def test_weights_digest_is_sha256_of_sorted_names_dtypes_shapes_and_bytes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    expected = []
    for name in sorted(model.state_dict()):
        t = model.state_dict()[name]
        expected += [rec(b"S", name.encode()), rec(b"T", f"{t.dtype}{tuple(t.shape)}".encode()),
                     rec(b"t", t.contiguous().numpy().tobytes())]
    assert weights_digest(model) == sha(*expected)
    # bfloat16 has no numpy type: hashed through its raw bytes.
    half = nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    w = half.weight.detach()
    assert weights_digest(half) == sha(rec(b"S", b"weight"), rec(b"T", b"torch.bfloat16(1, 1)"),
                                       rec(b"t", w.view(torch.int16).numpy().tobytes()))


def test_dataset_digest_of_plain_dicts_is_one_record_per_4096_then_the_count():
    dicts = [{"file_name": f"{i}.png", "label": i % 3, "image_id": i} for i in range(4097)]
    texts = [repr(sorted(d.items())) for d in dicts]
    first = "".join(texts[:4096]).encode()
    expected = sha(rec(b"P", first), rec(b"P", texts[4096].encode()), rec(b"N", b"4097"))
    assert dataset_digest(dicts) == expected
    assert dataset_digest([]) == sha(rec(b"N", b"0"))


def test_dataset_digest_of_rich_dicts_feeds_every_value_by_type():
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    rich = {"image": pixels, "label": 1, "image_id": np.int64(7), "file_name": "a.png",
            "annotations": [2, 0.5, True, None, "s", b"y", np.float32(0.25), torch.ones(1, dtype=torch.int8)],
            "meta": {"b": 1.5, "a": Path("p")}, "flag": np.bool_(False)}
    plain = {"file_name": "z.png", "label": 0}
    expected = sha(
        rec(b"P", repr(sorted(plain.items())).encode()),
        # the rich dict: its plain fields in one repr (sorted), then each other field, key then value
        rec(b"D", repr([("file_name", "a.png"), ("label", 1)]).encode()),
        rec(b"S", b"annotations"), rec(b"L", b"8"), rec(b"I", b"2"), rec(b"F", b"0.5"), rec(b"B", b"True"),
        rec(b"B", b"None"), rec(b"S", b"s"), rec(b"Y", b"y"), rec(b"F", b"0.25"),
        rec(b"T", b"torch.int8(1,)"), rec(b"t", b"\x01"),
        rec(b"S", b"flag"), rec(b"B", b"False"),
        rec(b"S", b"image"), rec(b"A", b"|u1(2, 3)"), rec(b"a", bytes(range(6))),
        rec(b"S", b"image_id"), rec(b"I", b"7"),
        rec(b"S", b"meta"), rec(b"D", repr([("b", 1.5)]).encode()), rec(b"S", b"a"),
        rec(b"R", f"{type(Path('p')).__qualname__}:{Path('p')!r}".encode()),
        rec(b"N", b"2"),
    )
    assert dataset_digest([plain, rich]) == expected
    assert array_digest(pixels) == sha(rec(b"A", b"|u1(2, 3)"), rec(b"a", bytes(range(6))))


class _Crop:
    def __init__(self):
        self.size = 32
        self.scale = (0.08, 1.0)
        self.mean = np.float32(0.5)
        self.options = {"b": None, "a": [1, "x"]}
        self.flag = True
        self.table = np.arange(3, dtype=np.int16)
        self.resize = functools.partial(max, 1, default=2)


class _Printed:
    def __repr__(self):
        return "Printed(a=1,\n    b=2)"


class _AddressRepr:
    def __init__(self):
        self.x = 1

    def __repr__(self):
        return "<_AddressRepr object at 0x1234>"


def test_view_description_names_every_attribute_in_order():
    table = sha(rec(b"A", b"<i2(3,)"), rec(b"a", np.arange(3, dtype=np.int16).tobytes()))[:16]
    assert view_description(_Crop()) == (
        f"_Crop(flag=True, mean={np.float32(0.5)!r}, options={{a: [1, 'x'], b: None}}, "
        "resize=partial(<built-in function max>, [1], {default: 2}), scale=[0.08, 1.0], size=32, "
        f"table=array(3,):{table})")
    tensor = sha(rec(b"T", b"torch.float32(2,)"), rec(b"t", torch.zeros(2).numpy().tobytes()))[:16]
    assert view_description([torch.zeros(2)]) == f"[array(2,):{tensor}]"
    assert view_description(_Printed()) == "Printed(a=1, b=2)"  # its own repr, on one line
    assert view_description(_AddressRepr()) == "_AddressRepr(x=1)"  # a repr with an address is not a name


def test_view_description_gives_up_below_depth_eight_with_a_fresh_token():
    def nested(levels):
        value = 1
        for _ in range(levels):
            value = [value]
        return value

    assert view_description(nested(8)) == "[" * 8 + "1" + "]" * 8
    deep = view_description(nested(9))
    assert re.fullmatch(r"\[{9}int<unidentified [0-9a-f]{8}>\]{9}", deep)
    assert view_description(nested(9)) != deep  # never matches itself: recomputed, never reused wrongly
    assert re.fullmatch(r"object<unidentified [0-9a-f]{8}>", view_description(object()))


class _Box:
    def __init__(self, v):
        self.v = v

    def __call__(self):
        return self.v


def _closure(v):
    def f():
        return v
    return f


def _default(v):
    def f(x=v):
        return x
    return f


# Each wrapper and how many levels of depth it adds to what it wraps (the containers it puts between).
_WRAPPERS = {
    "mapping": (lambda v: {"k": v}, 1),
    "attributes": (_Box, 1),
    "partial's function": (lambda v: functools.partial(_Box(v)), 2),  # the _Box, then its field
    "partial's arguments": (lambda v: functools.partial(print, v), 2),  # the list of arguments, then it
    "partial's keywords": (lambda v: functools.partial(print, k=v), 2),  # the dict, then the value
    "closure": (_closure, 1),
    "defaults": (_default, 2),  # the tuple of defaults, then the value
}


def test_view_description_counts_depth_through_every_kind_of_container():
    for kind, (wrap, step) in _WRAPPERS.items():
        def chain(levels, wrap=wrap):
            value = 1
            for _ in range(levels):
                value = wrap(value)
            return value

        deepest = 8 // step  # the leaf at depth 8: still described; one level more: past 8
        assert "<unidentified" not in view_description(chain(deepest)), kind
        assert "<unidentified" in view_description(chain(deepest + 1)), kind


def test_plain_values_are_their_repr_spaces_kept():
    assert view_description(["a  b", 1.5, None]) == "['a  b', 1.5, None]"


def test_a_pil_image_in_a_dict_is_digested_as_its_pixels():
    from PIL import Image

    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    image = Image.fromarray(pixels)
    expected = sha(rec(b"D", b"[]"), rec(b"S", b"image"), rec(b"A", b"|u1(2, 2, 3)"),
                   rec(b"a", bytes(range(12))), rec(b"N", b"1"))
    assert dataset_digest([{"image": image}]) == expected


def test_view_description_of_a_function_names_its_code_defaults_and_closure():
    def make(factor, offset=0):
        def view(d, k=3):
            return d * factor + offset + k
        return view

    described = view_description(make(2))
    assert re.fullmatch(
        re.escape(f"{__name__}.test_view_description_of_a_function_names_its_code_defaults_and_closure."
                  "<locals>.make.<locals>.view#") + r"[0-9a-f]{12}"
        + re.escape(str(["2", "0", "[3]", "None", "None"])), described)
    assert view_description(make(2)) == described
    assert view_description(make(2, offset=1)) != described

    def other(d, k=3):
        return d * 2 + 0 + k + (lambda: 5)()

    def other_constant(d, k=3):
        return d * 2 + 0 + k + (lambda: 6)()

    # Only a nested function's constant differs: its code is digested too.
    assert view_description(other).split("#")[1] != view_description(other_constant).split("#")[1]


def test_changes_lists_each_differing_key_field_in_order():
    old = {"weights_digest": "a" * 64, "view": "V(1)", "layers": ["res5"], "pooling": "avg", "num_images": 3,
           "extraction_version": 2}
    new = dict(old, weights_digest="b" * 64, layers=["res4", "res5"], num_images=4)
    assert _changes(old, new) == ('weights digest aaaaaaaaaaaa.. -> bbbbbbbbbbbb..; number of images 3 -> 4; '
                                  'layers ["res5"] -> ["res4", "res5"]')
    assert _changes(old, dict(old)) == ""
    assert _changes({}, {"view": "V(2)", "has_labels": True}) == "labels null -> true; view null -> V(2)"


def test_reusable_says_why_not(tmp_path):
    key = {"extraction_version": 2, "layers": ["res5"], "num_images": 2, "has_labels": False,
           "pooling": "avg"}
    out = str(tmp_path)
    assert _reusable(out, "train", key) == (False, "no finished extraction there")
    meta = tmp_path / "train_meta.json"
    meta.write_text("{not json")
    assert _reusable(out, "train", key) == (False, "no finished extraction there")
    meta.write_text(json.dumps(dict(key, dims={"res5": 3})))
    ok, why = _reusable(out, "train", key)
    assert not ok and why.startswith("its files do not match its meta file (") and "train_res5.npy" in why
    np.save(tmp_path / "train_res5.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "train_indices.npy", np.arange(2))
    assert _reusable(out, "train", key) == (True, "")
    assert _reusable(out, "train", dict(key, pooling="max")) == (False, "pooling avg -> max")
    np.save(tmp_path / "train_res5.npy", np.zeros((3, 3), np.float32))
    ok, why = _reusable(out, "train", key)
    assert not ok and "has shape (3, 3), its meta file says (2, 3)" in why
