"""Importing trunk weights: each foreign layout, built here from a torchvision ResNet, must load into a
d2ssl trunk so that it computes exactly what the torchvision model computes."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from iopath.common.file_io import PathHandler
from resnet_helpers import torchvision_resnet, torchvision_stages
from tolerances import assert_equal

from d2ssl.checkpoint import WeightsLoadError, load_pretrained_weights, load_weights_init, to_detectron2
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import do_train
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.meta_arch import SSLMetaArch

REPO = Path(__file__).resolve().parents[2]
# Every stage out, so a comparison covers stem and res2..res5.
ALL_STAGES = ("res2", "res3", "res4", "res5")


def d2ssl_model(depth: int = 18, **kwargs) -> SSLMetaArch:
    torch.manual_seed(123)  # not the torchvision model's weights
    return SSLMetaArch(build_resnet_trunk(depth, out_features=ALL_STAGES, **kwargs)).eval()


def prefixed(state_dict: dict, prefix: str, drop_fc: bool = True) -> dict:
    return {prefix + k: v for k, v in state_dict.items() if not (drop_fc and k.startswith("fc."))}


def torchvision_layout(sd):
    return sd


def vissl_layout(sd):
    # vissl/hooks/log_hooks.py: classy_state_dict.base_model.model.{trunk, heads}, beside training state.
    heads = {"0.clf.0.weight": torch.randn(1000, 512), "2.clf.0.weight": torch.randn(100, 9000)}
    base_model = {"model": {"trunk": prefixed(sd, "_feature_blocks."), "heads": heads}, "meta": {"trunk": {}}}
    classy = {"train": True, "base_model": base_model, "phase_idx": 3, "num_updates": 500}
    return {"phase_idx": 3, "iteration": 500, "loss": {}, "classy_state_dict": classy}


def jigclu_layout(sd):
    # JigsawClustering main.py: DDP-wrapped encoder with fc_clu (MLP) and fc_loc heads, no fc.
    state = prefixed(sd, "module.encoder.")
    state.update({"module.encoder.fc_clu.0.weight": torch.randn(512, 512),
                  "module.encoder.fc_clu.2.weight": torch.randn(128, 512),
                  "module.encoder.fc_loc.weight": torch.randn(4, 512)})
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}


def moco_v2_layout(sd):
    # moco/main_moco.py: query and key encoders (the key one differs), the queue, an MLP fc.
    other = torchvision_resnet("resnet18", seed=99).state_dict()
    state = {**prefixed(sd, "module.encoder_q."), **prefixed(other, "module.encoder_k.")}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 512),
                  "module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1)})
    return {"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": {}}


def moco_v3_layout(sd):
    other = torchvision_resnet("resnet18", seed=99).state_dict()
    state = {**prefixed(sd, "module.base_encoder."), **prefixed(other, "module.momentum_encoder.")}
    state["module.predictor.0.weight"] = torch.randn(256, 256)
    return {"epoch": 100, "arch": "resnet18", "state_dict": state}


@pytest.mark.parametrize(
    "make_layout, layout, unused",
    [
        (torchvision_layout, "torchvision", {"fc.weight", "fc.bias"}),
        (vissl_layout, "vissl", set()),
        (jigclu_layout, "jigclu", {"module.encoder.fc_loc.weight"}),
        (moco_v2_layout, "moco", {"module.queue", "module.encoder_k.conv1.weight"}),
        (moco_v3_layout, "moco-v3", {"module.predictor.0.weight", "module.momentum_encoder.conv1.weight"}),
    ],
)
def test_foreign_checkpoint_loads_into_d2ssl_trunk_with_same_outputs(
    tmp_path, tv_resnet18, images, make_layout, layout, unused
):
    path = str(tmp_path / "pretrained.pth")
    torch.save(make_layout(tv_resnet18.state_dict()), path)
    model = d2ssl_model()
    report = load_pretrained_weights(model, path)

    assert report.layout == layout
    trunk_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(report.loaded) == sorted(trunk_keys)
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert unused <= set(report.unused)
    with torch.no_grad():
        got, want = model.trunk(images), torchvision_stages(tv_resnet18, images)
    for name in ALL_STAGES:  # the same convolutions and eval-mode batch_norm calls in the same order
        assert_equal(got[name], want[name], name)


def test_d2ssl_checkpoint_loads_its_trunk_only(tmp_path, images):
    source = d2ssl_model()
    source.trunk.load_state_dict(build_resnet_trunk(18, out_features=ALL_STAGES).state_dict())
    source.head = torch.nn.Linear(512, 10)  # a method head: not part of the trunk
    AtomicCheckpointer(source, str(tmp_path)).save("model_final", iteration=9)
    target = d2ssl_model()
    report = load_pretrained_weights(target, str(tmp_path / "model_final.pth"))
    assert (report.layout, report.target_prefix) == ("d2ssl", "trunk.")
    assert sorted(report.unused) == ["head.bias", "head.weight"]
    with torch.no_grad():
        assert_equal(target.trunk(images)["res5"], source.eval().trunk(images)["res5"], "res5")


def test_detectron2_pickle_loads_into_a_bare_trunk(tmp_path, tv_resnet18, images):
    path = tmp_path / "r18.pkl"
    with open(path, "wb") as f:
        pickle.dump(to_detectron2(tv_resnet18.state_dict()), f)
    trunk = d2ssl_model().trunk
    report = load_pretrained_weights(trunk, str(path))
    assert (report.layout, report.target_prefix) == ("detectron2", "")
    with torch.no_grad():
        assert_equal(trunk(images)["res5"], torchvision_stages(tv_resnet18, images)["res5"], "res5")


def test_report_table_is_logged(tmp_path, tv_resnet18, caplog):
    path = str(tmp_path / "tv.pth")
    torch.save(tv_resnet18.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="d2ssl"):
        load_pretrained_weights(d2ssl_model(), path)
    table = caplog.text
    assert path in table and "torchvision layout" in table
    for row in ("loaded", "missing", "unexpected", "shape mismatch", "not used"):
        assert row in table


def test_state_dict_key_name_and_skip_layers(tmp_path, tv_resnet18):
    path = str(tmp_path / "jigclu.pth")
    torch.save(jigclu_layout(tv_resnet18.state_dict()), path)
    model = d2ssl_model()
    before = model.trunk.res5[0].conv1.weight.clone()
    report = load_pretrained_weights(model, path, state_dict_key_name="state_dict", skip_layers=("res5.",))
    assert report.skipped and all("res5." in k for k in report.skipped)
    assert torch.equal(model.trunk.res5[0].conv1.weight, before)
    assert torch.equal(model.trunk.res4[0].conv1.weight, tv_resnet18.layer3[0].conv1.weight)
    with pytest.raises(WeightsLoadError, match=r"no key 'model_state_dict'.*\['arch', 'epoch'"):
        load_pretrained_weights(model, path, state_dict_key_name="model_state_dict")


def test_remove_and_append_prefix(tmp_path, tv_resnet18):
    # Two ResNets under prefixes no known code base uses: REMOVE_PREFIX picks one; APPEND_PREFIX picks
    # where it goes in a model that has two trunks.
    other = torchvision_resnet("resnet18", seed=5).state_dict()
    path = str(tmp_path / "student_teacher.pth")
    torch.save({**prefixed(tv_resnet18.state_dict(), "student."), **prefixed(other, "teacher.")}, path)
    model = torch.nn.ModuleDict({"online": d2ssl_model().trunk, "target": d2ssl_model().trunk})
    with pytest.raises(WeightsLoadError, match="REMOVE_PREFIX"):
        load_pretrained_weights(model, path)
    with pytest.raises(WeightsLoadError, match="APPEND_PREFIX"):
        load_pretrained_weights(model, path, remove_prefix="student.")
    report = load_pretrained_weights(model, path, remove_prefix="student.", append_prefix="target.")
    assert report.target_prefix == "target." and not report.missing
    assert torch.equal(model["target"].stem.conv1.weight, tv_resnet18.conv1.weight)
    assert not torch.equal(model["online"].stem.conv1.weight, tv_resnet18.conv1.weight)


def test_nothing_loaded_names_the_file_and_first_keys(tmp_path, tv_resnet18):
    path = str(tmp_path / "r18_64ch.pth")
    torch.save(tv_resnet18.state_dict(), path)
    narrow = d2ssl_model(base_channels=16)  # every shape differs
    with pytest.raises(WeightsLoadError, match=rf"{path}: nothing was loaded.*stem\.conv1\.weight"):
        load_pretrained_weights(narrow, path)


def test_missing_file_and_unknown_layout_are_errors(tmp_path):
    with pytest.raises(WeightsLoadError, match="does not exist"):
        load_pretrained_weights(d2ssl_model(), str(tmp_path / "absent.pth"))
    path = str(tmp_path / "vit.pth")
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3)}}, path)
    with pytest.raises(WeightsLoadError, match=r"vit\.pth.*blocks\.0\.attn\.qkv\.weight"):
        load_pretrained_weights(d2ssl_model(), path)


class _PrefixedLocalHandler(PathHandler):
    """``d2ssltest://<path>`` -> ``<root>/<path>``: stands for a remote store behind iopath."""

    PREFIX = "d2ssltest://"

    def __init__(self, root: str):
        super().__init__()
        self.root = root

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return os.path.join(self.root, path[len(self.PREFIX):])

    def _open(self, path, mode="r", **kwargs):
        return open(self._get_local_path(path), mode)


def test_weights_from_an_iopath_uri(tmp_path, tv_resnet18):
    from detectron2.utils.file_io import PathManager

    torch.save(tv_resnet18.state_dict(), tmp_path / "tv.pth")
    if _PrefixedLocalHandler.PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(_PrefixedLocalHandler(str(tmp_path)))
    else:
        PathManager._path_handlers[_PrefixedLocalHandler.PREFIX].root = str(tmp_path)
    model = d2ssl_model()
    report = load_pretrained_weights(model, "d2ssltest://tv.pth")
    assert report.loaded and torch.equal(model.trunk.stem.conv1.weight, tv_resnet18.conv1.weight)


def test_weights_init_config_block(tmp_path, tv_resnet18):
    from detectron2.config import LazyConfig

    block = LazyConfig.load(str(REPO / "configs" / "common" / "train.py")).train.weights_init
    model = d2ssl_model()
    assert load_weights_init(model, block) is None  # PARAMS_FILE empty: nothing to do
    torch.save(jigclu_layout(tv_resnet18.state_dict()), tmp_path / "jigclu.pth")
    block.PARAMS_FILE = str(tmp_path / "jigclu.pth")
    report = load_weights_init(model, block)
    assert report.layout == "jigclu" and report.skipped  # num_batches_tracked, the default SKIP_LAYERS
    block.STATE_DCT_KEY_NAME = "state_dict"
    with pytest.raises(WeightsLoadError, match="STATE_DCT_KEY_NAME"):
        load_weights_init(model, block)


def test_do_train_starts_from_weights_init(tmp_path, tiny_config):
    # A tiny trunk saved by another d2ssl run (seeded differently) must be what training starts from;
    # at a negligible learning rate the convolutions stay as loaded.
    torch.manual_seed(7)
    source = SSLMetaArch(build_resnet_trunk(18, base_channels=16))
    AtomicCheckpointer(source, str(tmp_path / "pretrained")).save("model_final")

    cfg = tiny_config("jigsaw", "train.max_iter=1", "optimizer.lr=1e-12",
                      f"train.weights_init.PARAMS_FILE={tmp_path / 'pretrained' / 'model_final.pth'}")
    do_train(cfg)
    trained = torch.load(tmp_path / "output" / "model_final.pth", weights_only=False)["model"]
    for key, value in source.state_dict().items():
        if key.endswith("conv1.weight"):
            torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-9)
