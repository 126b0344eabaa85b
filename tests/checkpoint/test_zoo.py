"""zoo:<name> weights: downloaded from a local HTTP server standing for the references' hosts, checked
against their sha256, continued after a cut, and loaded through the one importer."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import os
import re
import runpy
import sys
import threading
from pathlib import Path

import pytest
import torch

from d2ssl.checkpoint import (
    WeightsLoadError,
    convert_checkpoint,
    load_pretrained_weights,
    load_weights_init,
    zoo,
)
from d2ssl.checkpoint.layouts import detectron2_to_torchvision_key
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.meta_arch import SSLMetaArch
from d2ssl.utils.safe_io import load_pickle_file


class _Server(http.server.ThreadingHTTPServer):
    root: str
    requests: list[tuple[str, str | None]]  # (path, Range header) of each GET
    cuts: list[int]  # the next responses send only this many bytes of their body, then close
    honour_range: bool


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's root, with single ``bytes=N-`` ranges, and cuts responses on demand."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        wanted = self.headers.get("Range")
        self.server.requests.append((self.path, wanted))
        local = os.path.join(self.server.root, self.path.lstrip("/"))
        if not os.path.isfile(local):
            self.send_error(404)
            return
        data = Path(local).read_bytes()
        start = 0
        if wanted and self.server.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cuts:
            self.wfile.write(body[: self.server.cuts.pop(0)])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A mirror on 127.0.0.1 (``$D2SSL_ZOO_MIRROR``) serving ``tmp_path/served``, and the zoo cache
    in ``tmp_path/cache`` (``$D2SSL_CACHE``)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = _Server(("127.0.0.1", 0), _RangeHandler)
    httpd.root, httpd.requests, httpd.cuts, httpd.honour_range = str(root), [], [], True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("D2SSL_ZOO_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("D2SSL_CACHE", str(tmp_path / "cache"))
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def tiny_trunk(seed: int):
    torch.manual_seed(seed)
    return build_resnet_trunk(18, base_channels=8, out_features=("res2", "res3", "res4", "res5")).eval()


def torchvision_names(trunk) -> dict:
    return {detectron2_to_torchvision_key(k): v for k, v in trunk.state_dict().items()}


def vissl_file(trunk) -> dict:
    # vissl/hooks/log_hooks.py: classy_state_dict.base_model.model.trunk, torchvision names.
    blocks = {f"_feature_blocks.{k}": v for k, v in torchvision_names(trunk).items()}
    base_model = {"model": {"trunk": blocks, "heads": {"0.weight": torch.randn(4, 4)}}, "meta": {}}
    return {"phase_idx": 3, "iteration": 500, "classy_state_dict": {"base_model": base_model}}


def jigclu_file(trunk) -> dict:
    # JigsawClustering main.py: the DDP-wrapped encoder's state_dict beside epoch, arch and optimizer.
    state = {f"module.encoder.{k}": v for k, v in torchvision_names(trunk).items()}
    state["module.encoder.fc_loc.weight"] = torch.randn(4, 8)
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {}}


def serve(server, name: str, content) -> bytes:
    """Writes ``content`` (torch.save'd, or bytes) where the mirror serves zoo entry ``name``."""
    entry = zoo.zoo_entry(name)
    path = Path(server.root) / name / entry.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path.read_bytes()


def pinned(monkeypatch, name: str, sha256: str) -> zoo.ZooEntry:
    entry = dataclasses.replace(zoo.zoo_entry(name), sha256=sha256)
    monkeypatch.setitem(zoo._BY_NAME, name, entry)
    return entry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_zoo_name_downloads_records_checksum_and_loads_into_trunk(server, caplog):
    source = tiny_trunk(seed=1)
    data = serve(server, "pirl_r50_800ep", vissl_file(source))
    model = SSLMetaArch(tiny_trunk(seed=2))

    with caplog.at_level(logging.WARNING, logger="d2ssl"):
        report = load_pretrained_weights(model, "zoo:pirl_r50_800ep")

    assert report.layout == "vissl" and report.params_file == "zoo:pirl_r50_800ep"
    for key, value in source.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[key], value), key
    cached = zoo.cached_path(zoo.zoo_entry("pirl_r50_800ep"))
    assert cached.startswith(os.environ["D2SSL_CACHE"]) and Path(cached).read_bytes() == data
    assert Path(cached + ".sha256").read_text().split()[0] == sha(data)
    assert not os.path.exists(cached + zoo.PART_SUFFIX)
    assert "not yet pinned" in caplog.text
    # A second load is served from the cache, checked against the record.
    load_weights_init(SSLMetaArch(tiny_trunk(seed=3)), {"PARAMS_FILE": "zoo:pirl_r50_800ep"})
    file_name = zoo.zoo_entry("pirl_r50_800ep").file_name
    assert [path for path, _ in server.requests] == [f"/pirl_r50_800ep/{file_name}"]


def test_zoo_name_converts_a_jigclu_file_to_detectron2(server, tmp_path):
    source = tiny_trunk(seed=1)
    serve(server, "jigclu_r50_200ep", jigclu_file(source))
    out = str(tmp_path / "jigclu_d2.pkl")

    convert_checkpoint("zoo:jigclu_r50_200ep", out, "detectron2")

    written = load_pickle_file(out)["model"]
    key = "res2.0.conv1.weight"
    assert torch.equal(torch.as_tensor(written[key]), source.state_dict()[key])


def test_pinned_checksum_mismatch_is_refused_and_the_file_not_reused(server, monkeypatch):
    good = serve(server, "rotnet_r50_in1k_105ep", vissl_file(tiny_trunk(seed=1)))
    pinned(monkeypatch, "rotnet_r50_in1k_105ep", sha(good))
    bad = serve(server, "rotnet_r50_in1k_105ep", vissl_file(tiny_trunk(seed=2)))
    cached = zoo.cached_path(zoo.zoo_entry("rotnet_r50_in1k_105ep"))

    with pytest.raises(zoo.ZooChecksumError, match=f"is {sha(bad)}, expected {sha(good)}"):
        zoo.local_zoo_file("zoo:rotnet_r50_in1k_105ep")
    assert not os.path.exists(cached)  # moved aside: nothing will read it as the entry
    assert Path(cached + zoo.REJECTED_SUFFIX).read_bytes() == bad
    with pytest.raises(WeightsLoadError, match="expected"):  # the loader's own error type, same refusal
        load_pretrained_weights(SSLMetaArch(tiny_trunk(seed=3)), "zoo:rotnet_r50_in1k_105ep")

    serve(server, "rotnet_r50_in1k_105ep", good)  # the server is fixed: the next try downloads again
    assert Path(zoo.local_zoo_file("zoo:rotnet_r50_in1k_105ep")).read_bytes() == good
    assert len(server.requests) == 3


def test_cached_file_that_no_longer_matches_its_record_is_downloaded_again(server):
    good = serve(server, "npid_r50_200ep_4kneg", vissl_file(tiny_trunk(seed=1)))
    cached = zoo.local_zoo_file("npid_r50_200ep_4kneg")
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    Path(cached).write_bytes(bytes(damaged))

    with pytest.raises(zoo.ZooChecksumError, match=f"expected {sha(good)} \\(recorded"):
        zoo.local_zoo_file("npid_r50_200ep_4kneg")
    assert not os.path.exists(cached) and os.path.exists(cached + ".sha256")  # the record outlives the file

    # The server now serves other bytes: the kept record refuses them too (no silent re-trust).
    other = serve(server, "npid_r50_200ep_4kneg", vissl_file(tiny_trunk(seed=2)))
    with pytest.raises(zoo.ZooChecksumError, match=f"is {sha(other)}, expected {sha(good)}"):
        zoo.local_zoo_file("npid_r50_200ep_4kneg")
    serve(server, "npid_r50_200ep_4kneg", good)
    assert Path(zoo.local_zoo_file("npid_r50_200ep_4kneg")).read_bytes() == good


def test_cut_download_leaves_a_part_and_the_retry_resumes_with_range(server):
    data = serve(server, "pirl_r50_200ep", vissl_file(tiny_trunk(seed=1)))
    cut = len(data) // 3
    server.cuts = [cut]
    cached = zoo.cached_path(zoo.zoo_entry("pirl_r50_200ep"))

    with pytest.raises(zoo.ZooDownloadError, match="run again to continue"):
        zoo.local_zoo_file("pirl_r50_200ep", attempts=1)
    assert not os.path.exists(cached) and not os.path.exists(cached + ".sha256")  # partial never passes
    assert Path(cached + zoo.PART_SUFFIX).read_bytes() == data[:cut]

    path = zoo.local_zoo_file("pirl_r50_200ep", attempts=1)

    assert [rng for _, rng in server.requests] == [None, f"bytes={cut}-"]
    assert sha(Path(path).read_bytes()) == sha(data)
    assert Path(path + ".sha256").read_text().split()[0] == sha(data)
    assert not os.path.exists(cached + zoo.PART_SUFFIX)


def test_cut_download_is_resumed_within_one_call(server):
    data = serve(server, "pirl_r50_200ep", vissl_file(tiny_trunk(seed=1)))
    quarter = len(data) // 4
    server.cuts = [quarter, quarter]  # two cuts: the third request completes it

    path = zoo.local_zoo_file("pirl_r50_200ep", attempts=3)

    assert [rng for _, rng in server.requests] == [None, f"bytes={quarter}-", f"bytes={2 * quarter}-"]
    assert Path(path).read_bytes() == data


def test_server_ignoring_range_restarts_from_the_first_byte(server):
    data = serve(server, "pirl_r50_200ep", vissl_file(tiny_trunk(seed=1)))
    server.cuts, server.honour_range = [len(data) // 3], False

    with pytest.raises(zoo.ZooDownloadError):
        zoo.local_zoo_file("pirl_r50_200ep", attempts=1)
    path = zoo.local_zoo_file("pirl_r50_200ep", attempts=1)

    assert server.requests[1][1] is not None  # it asked for a range, got the whole file (200)
    assert Path(path).read_bytes() == data


def test_complete_part_left_before_the_rename_is_finished_without_downloading_again(server):
    data = serve(server, "pirl_r50_200ep", vissl_file(tiny_trunk(seed=1)))
    cached = zoo.cached_path(zoo.zoo_entry("pirl_r50_200ep"))
    os.makedirs(os.path.dirname(cached))
    Path(cached + zoo.PART_SUFFIX).write_bytes(data)  # a kill between the last byte and the rename

    assert Path(zoo.local_zoo_file("pirl_r50_200ep")).read_bytes() == data
    assert [rng for _, rng in server.requests] == [f"bytes={len(data)}-"]  # answered 416, no body


def test_unknown_zoo_name_lists_the_known_names(server):
    with pytest.raises(WeightsLoadError, match="no zoo entry named 'pirl_r50'") as error:
        load_pretrained_weights(SSLMetaArch(tiny_trunk(seed=1)), "zoo:pirl_r50")
    for entry in zoo.ZOO_ENTRIES:
        assert entry.name in str(error.value)
    assert server.requests == []


def test_drive_link_is_refused_with_the_path_for_a_hand_download(server, monkeypatch, tmp_path):
    drive = "https://drive.google.com/file/d/1_TyLacC9EcOIoC9uvRQ8dMXGXpXOO_R1/view?usp=sharing"
    entry = dataclasses.replace(zoo.zoo_entry("jigclu_r50_200ep"), url=drive)
    monkeypatch.setitem(zoo._BY_NAME, "jigclu_r50_200ep", entry)
    monkeypatch.delenv("D2SSL_ZOO_MIRROR")
    cached = zoo.cached_path(entry)

    with pytest.raises(zoo.ZooDownloadError, match=f"by hand .* save it as {re.escape(cached)}"):
        zoo.local_zoo_file("jigclu_r50_200ep")

    source = tiny_trunk(seed=1)
    torch.save(jigclu_file(source), cached)  # what the user does by hand
    report = load_pretrained_weights(SSLMetaArch(tiny_trunk(seed=2)), "zoo:jigclu_r50_200ep")
    assert report.layout == "jigclu" and os.path.isfile(cached + ".sha256")
    assert server.requests == []


def test_url_argument_and_cache_dir_argument(server, tmp_path):
    data = serve(server, "pirl_r50_200ep", vissl_file(tiny_trunk(seed=1)))
    mirror = os.environ["D2SSL_ZOO_MIRROR"]
    url = f"{mirror}/pirl_r50_200ep/{zoo.zoo_entry('pirl_r50_200ep').file_name}"

    path = zoo.local_zoo_file("pirl_r50_200ep", cache_dir=str(tmp_path / "elsewhere"), url=url)

    assert path.startswith(str(tmp_path / "elsewhere")) and Path(path).read_bytes() == data


def test_cache_folder_depends_on_the_listed_url():
    entry = zoo.zoo_entry("pirl_r50_800ep")
    moved = dataclasses.replace(entry, url=entry.url.replace("34377f59", "00000000"))
    assert zoo.cached_path(entry, "/c") != zoo.cached_path(moved, "/c")


def test_entries_are_well_formed():
    names = [e.name for e in zoo.ZOO_ENTRIES]
    assert len(names) == len(set(names))
    methods = {e.method for e in zoo.ZOO_ENTRIES}
    assert {"jigsaw", "rotnet", "npid", "pirl", "clusterfit", "jigclu"} <= methods
    for entry in zoo.ZOO_ENTRIES:
        assert entry.url.startswith(("https://", "http://")) and entry.file_name
        assert entry.layout in zoo.KNOWN_LAYOUTS and entry.layout in {"vissl", "jigclu", "torchvision"}
        assert entry.reference.split("@")[0] in {"facebookresearch/vissl", "dvlab-research/JigsawClustering"}
        numbers = zoo.published_numbers(entry.name)
        assert numbers and all(set(n) == set(zoo.PUBLISHED_KEYS) for n in numbers)
        assert all(n["benchmark"] and 0 < n["value"] < 100 for n in numbers)
    assert zoo.published_numbers("pirl_r50_800ep")[0]["value"] == 64.29
    zoo.published_numbers("pirl_r50_800ep")[0]["value"] = 0  # a copy: the entry keeps its number
    assert zoo.zoo_entry("pirl_r50_800ep").published[0]["value"] == 64.29


def test_malformed_entry_is_refused_naming_the_field():
    good = zoo.zoo_entry("pirl_r50_800ep")
    with pytest.raises(ValueError, match="layout 'caffe2' is not one of"):
        dataclasses.replace(good, layout="caffe2")
    with pytest.raises(ValueError, match="needs exactly"):
        dataclasses.replace(good, published=({"benchmark": "linear", "top1": 1.0},))
    with pytest.raises(ValueError, match="sha256"):
        dataclasses.replace(good, sha256="abc")


def test_listing_names_every_entry_and_show_gives_the_reference(tmp_path):
    table = zoo.zoo_table(str(tmp_path))
    for entry in zoo.ZOO_ENTRIES:
        assert f"zoo:{entry.name}" in table
    shown = zoo.describe_entry("zoo:pirl_r50_800ep", str(tmp_path))
    assert "MODEL_ZOO.md:162" in shown and "projects/PIRL/README.md:39" in shown and str(tmp_path) in shown


def run_tool(monkeypatch, *args: str) -> None:
    tool = Path(__file__).resolve().parents[2] / "tools" / "zoo.py"
    monkeypatch.setattr(sys, "argv", [str(tool), *args])
    runpy.run_path(str(tool), run_name="__main__")


def test_zoo_tool_lists_the_entries_and_names_an_unknown_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2SSL_CACHE", str(tmp_path))
    run_tool(monkeypatch)
    listing = capsys.readouterr().out
    assert "zoo:jigclu_r50_200ep" in listing and str(tmp_path / "zoo") in listing
    with pytest.raises(SystemExit) as exit_status:
        run_tool(monkeypatch, "--show", "nope")
    assert exit_status.value.code == 1 and "no zoo entry named 'nope'" in capsys.readouterr().err


def test_zoo_name_as_a_run_init_checkpoint_points_to_weights_init(server):
    from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError

    checkpointer = AtomicCheckpointer(SSLMetaArch(tiny_trunk(seed=1)))
    with pytest.raises(CheckpointLoadError, match="train.weights_init.PARAMS_FILE=zoo:pirl_r50_800ep"):
        checkpointer.resume_or_load("zoo:pirl_r50_800ep", resume=False)
    assert server.requests == []


def test_zoo_name_as_a_detector_init_checkpoint_is_converted(server, tmp_path):
    from d2ssl.engine.detection import prepare_init_checkpoint

    source = tiny_trunk(seed=1)
    serve(server, "jigclu_r50_200ep", jigclu_file(source))

    converted = prepare_init_checkpoint("zoo:jigclu_r50_200ep", str(tmp_path / "det"))

    written = load_pickle_file(converted)["model"]
    key = "res5.1.conv2.weight"
    assert torch.equal(torch.as_tensor(written[key]), source.state_dict()[key])


def test_sweep_identity_holds_the_digest_of_the_zoo_file(server):
    from omegaconf import OmegaConf

    from d2ssl.evaluation.sweep import _weights_digests

    data = serve(server, "pirl_r50_200ep", vissl_file(tiny_trunk(seed=1)))
    train = {"weights_init": {"PARAMS_FILE": "zoo:pirl_r50_200ep"}, "init_checkpoint": ""}
    cfg = OmegaConf.create({"train": train})

    assert _weights_digests(cfg) == {"train.weights_init.PARAMS_FILE": sha(data)}
