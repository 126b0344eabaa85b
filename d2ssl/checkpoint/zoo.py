"""Named published checkpoints: ``zoo:<name>`` wherever a weights path is accepted.

``train.weights_init.PARAMS_FILE=zoo:pirl_r50_800ep``, ``train.init_checkpoint=zoo:jigclu_r50_200ep``
(feature extraction, detection fine-tuning) and ``tools/convert_checkpoint.py zoo:<name> ...`` all
reach ``d2ssl.checkpoint.load.read_checkpoint``, which asks ``local_zoo_file`` for a verified local
copy and then reads it like any other file (the layout is found from its keys as usual). The
``train.init_checkpoint`` of a pretraining or linear run is a d2ssl checkpoint loaded by name: a zoo
name there is refused pointing to ``train.weights_init.PARAMS_FILE``.

Each ``ZooEntry`` records the URL exactly as its reference lists it, the reference's file and line,
the layout the file is in, and the numbers the reference published (``published_numbers``), so a
results table can put them beside measured ones. ``python tools/zoo.py`` lists them.

Cache: ``$D2SSL_CACHE/zoo`` (default ``~/.cache/d2ssl/zoo``), one folder per entry and listed URL
(``<name>-<first 8 hex of sha256(url)>``), so a corrected URL never reuses the old bytes. Guarantees:

- A download goes to ``<file>.part`` and is renamed into place only once it holds as many bytes as
  the server announced; a partial file never passes as complete. A cut download keeps the ``.part``
  and the next try continues it with an HTTP ``Range`` request (from the start if the server
  ignores ``Range``). iopath's ``HTTPURLHandler`` downloads in one piece and deletes what it got on
  an error, hence urllib here.
- The file's sha256 must equal the entry's pinned ``sha256``. Where none is pinned (none of the
  references publishes one), the first complete download records it in ``<file>.sha256`` (the
  ``sha256sum`` format ``d2ssl.utils.safe_io.verify_integrity`` checks on every load) and later
  loads and downloads must match that record; the log says the checksum is not yet pinned.
- A file that fails its checksum is moved to ``<file>.rejected`` (so the next try downloads again,
  and the record, which is kept, still judges it) and the error names the expected and the
  received sha256.
- URLs that a plain HTTP client cannot download (Google Drive asks for a confirmation) are refused
  with the path to put a hand-downloaded copy at; such a copy is then checked like a download.
- ``$D2SSL_ZOO_MIRROR`` (a base URL): files are fetched from ``<mirror>/<name>/<file name>`` instead
  (``<file name>``: the last part of the listed URL), e.g. a cluster's own copies; the checksum rules
  are the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tabulate import tabulate

from d2ssl.checkpoint.layouts import DETECTRON2_STYLE_PREFIXES, TORCHVISION_STYLE_PREFIXES
from d2ssl.utils.safe_io import atomic_write, checksum_path, sha256_of

logger = logging.getLogger("d2ssl")

ZOO_PREFIX = "zoo:"
KNOWN_LAYOUTS = frozenset(TORCHVISION_STYLE_PREFIXES.values()) | frozenset(DETECTRON2_STYLE_PREFIXES.values())
PUBLISHED_KEYS = ("benchmark", "metric", "value", "source")
PART_SUFFIX = ".part"
REJECTED_SUFFIX = ".rejected"
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole file
# Hosts whose share links answer a plain GET with an HTML page (a virus-scan confirmation), not the file.
MANUAL_DOWNLOAD_HOSTS = ("drive.google.com", "docs.google.com")


class ZooError(ValueError):
    """A zoo name cannot be resolved to a verified local file; the message says how to proceed."""


class UnknownZooNameError(ZooError):
    """No entry has this name; the message lists the known names."""


class ZooDownloadError(ZooError):
    """The download failed or was cut; a ``.part`` kept is continued by the next try."""


class ZooChecksumError(ZooError):
    """The file's sha256 differs from the pinned or recorded one; the file was moved aside."""


@dataclass(frozen=True)
class ZooEntry:
    """A published checkpoint.

    Attributes:
        name: what follows ``zoo:``.
        method: the pretraining method, as d2ssl names it (``jigsaw``, ``pirl``, ...).
        arch: ``resnet50`` or ``resnet50w2`` (twice the width).
        data: the pretraining data set.
        url: the download URL exactly as ``reference`` lists it.
        sha256: the file's digest, or ``None`` when no reference publishes one (see module docstring).
        layout: where the file keeps its ResNet, in ``d2ssl.checkpoint.layouts``' names.
        published: the reference's numbers, each ``{"benchmark", "metric", "value", "source"}``.
        reference: where the URL is listed: ``owner/repo@commit path:line``.
        notes: what a user should know about the file or its listing.
        manual_download: why it cannot be downloaded automatically (``None``: it can).
    """

    name: str
    method: str
    arch: str
    data: str
    url: str
    sha256: str | None
    layout: str
    published: tuple[Mapping[str, Any], ...]
    reference: str
    notes: str = ""
    manual_download: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            problems.append("name must be lower-case letters, digits and _")
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not os.path.basename(url.path):
            problems.append(f"url {self.url!r} is not an http(s) URL of a file")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            problems.append(f"sha256 {self.sha256!r} is not 64 lower-case hex digits")
        if self.layout not in KNOWN_LAYOUTS:
            problems.append(f"layout {self.layout!r} is not one of {sorted(KNOWN_LAYOUTS)}")
        if not self.published:
            problems.append("no published numbers")
        for number in self.published:
            if set(number) != set(PUBLISHED_KEYS) or not isinstance(number["value"], (int, float)):
                problems.append(f"published number {dict(number)} needs exactly {PUBLISHED_KEYS}")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{7,40} \S+:\d+", self.reference):
            problems.append(f"reference {self.reference!r} is not 'owner/repo@commit path:line'")
        if problems:
            raise ValueError(f"zoo entry {self.name!r}: " + "; ".join(problems))

    @property
    def file_name(self) -> str:
        """The URL's last path component: the name the file is cached under."""
        return os.path.basename(urlsplit(self.url).path)


# ---------------------------------------------------------------------------------------------- entries
# VISSL's MODEL_ZOO.md at this commit; its numbers come from configs/config/model_zoo/*.json, which run
# benchmark/linear_image_classification/imagenet1k/eval_resnet_8gpu_transfer_in1k_linear (linear
# classifiers on frozen conv1..res5avg features; the table gives one top-1 without naming the layer).
_VISSL = "facebookresearch/vissl@09270ed25a6c2cf71263d955b64cbe076d34ac45"
_VISSL_ZOO = f"{_VISSL} MODEL_ZOO.md"
_VISSL_LINEAR = "linear ImageNet-1K val (VISSL eval_resnet_8gpu_transfer_in1k_linear)"
_PIRL_README = f"{_VISSL} projects/PIRL/README.md"
_PIRL_LINEAR = "linear ImageNet-1K val, single crop (VISSL projects/PIRL)"
_JIGCLU = "dvlab-research/JigsawClustering@1490f3b981637e0cca14b4f3e962ae7572438adc README.md"
_FB = "https://dl.fbaipublicfiles.com/vissl/model_zoo/"
# The converted Caffe2 / lemniscate files hold a plain torchvision state dict under model_state_dict
# (the model_zoo json loads them with STATE_DICT_KEY_NAME=model_state_dict; VISSL's
# extra_scripts/convert_caffe2_to_torchvision_resnet.py writes torchvision names).
_TV_NOTE = "torchvision names under 'model_state_dict' (VISSL: STATE_DICT_KEY_NAME=model_state_dict)"


def _vissl(line: int, top1: float) -> dict[str, Any]:
    return {"benchmark": _VISSL_LINEAR, "metric": "top1", "value": top1, "source": f"{_VISSL_ZOO}:{line}"}


def _pirl(line: int, top1: float) -> dict[str, Any]:
    return {"benchmark": _PIRL_LINEAR, "metric": "top1", "value": top1, "source": f"{_PIRL_README}:{line}"}


def _jigclu(line: int, benchmark: str, metric: str, value: float) -> dict[str, Any]:
    return {"benchmark": benchmark, "metric": metric, "value": value, "source": f"{_JIGCLU}:{line}"}


ZOO_ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry("jigsaw_r50_in1k_perm100", "jigsaw", "resnet50", "ImageNet-1K",
             _FB + "jigsaw_rn50_in1k_ep105_perm2k_jigsaw_8gpu_resnet_17_07_20.db174a43/"
                   "model_final_checkpoint_phase104.torch",
             None, "vissl", (_vissl(87, 48.57),), f"{_VISSL_ZOO}:87",
             notes="VISSL, 105 epochs, 100 permutations (the URL says perm2k; the model_zoo json names this "
                   "run rn50_in1k_perm100_jigsaw)"),
    ZooEntry("jigsaw_r50_in1k_perm2k", "jigsaw", "resnet50", "ImageNet-1K",
             _FB + "jigsaw_rn50_in1k_ep105_perm2k_jigsaw_8gpu_resnet_17_07_20.cccee144/"
                   "model_final_checkpoint_phase104.torch",
             None, "vissl", (_vissl(88, 46.73),), f"{_VISSL_ZOO}:88",
             notes="VISSL, 105 epochs, 2K permutations"),
    ZooEntry("jigsaw_r50_in1k_perm10k", "jigsaw", "resnet50", "ImageNet-1K",
             _FB + "jigsaw_rn50_in1k_ep105_perm2k_jigsaw_8gpu_resnet_20_07_20.3d706467/"
                   "model_final_checkpoint_phase104.torch",
             None, "vissl", (_vissl(89, 48.11),), f"{_VISSL_ZOO}:89",
             notes="VISSL, 105 epochs, 10K permutations"),
    ZooEntry("jigsaw_r50_in22k_perm2k", "jigsaw", "resnet50", "ImageNet-22K",
             _FB + "converted_vissl_jigsaw_rn50_perm2k_in22k_8gpu_ep105.torch",
             None, "vissl", (_vissl(90, 44.84),), f"{_VISSL_ZOO}:90",
             notes="VISSL, 105 epochs, 2K permutations"),
    ZooEntry("jigsaw_r50_in1k_goyal19", "jigsaw", "resnet50", "ImageNet-1K",
             _FB + "converted_vissl_rn50_jigsaw_in1k_goyal19.torch",
             None, "torchvision", (_vissl(91, 46.58),), f"{_VISSL_ZOO}:91",
             notes=f"Goyal et al. 2019 (Caffe2, converted); {_TV_NOTE}"),
    ZooEntry("jigsaw_r50_in22k_goyal19", "jigsaw", "resnet50", "ImageNet-22K",
             _FB + "converted_vissl_rn50_jigsaw_in22k_goyal19.torch",
             None, "torchvision", (_vissl(92, 53.09),), f"{_VISSL_ZOO}:92",
             notes=f"Goyal et al. 2019 (Caffe2, converted); {_TV_NOTE}"),
    ZooEntry("jigsaw_r50_yfcc100m_goyal19", "jigsaw", "resnet50", "YFCC100M",
             _FB + "converted_vissl_rn50_jigsaw_yfcc100m_goyal19.torch",
             None, "torchvision", (_vissl(93, 51.37),), f"{_VISSL_ZOO}:93",
             notes=f"Goyal et al. 2019 (Caffe2, converted); {_TV_NOTE}"),
    ZooEntry("rotnet_r50_in1k_105ep", "rotnet", "resnet50", "ImageNet-1K",
             _FB + "rotnet_rn50_in1k_ep105_rotnet_8gpu_resnet_17_07_20.46bada9f/"
                   "model_final_checkpoint_phase125.torch",
             None, "vissl", (_vissl(118, 48.2),), f"{_VISSL_ZOO}:118", notes="VISSL, 105 epochs"),
    ZooEntry("rotnet_r50_in22k_105ep", "rotnet", "resnet50", "ImageNet-22K",
             _FB + "converted_vissl_rn50_rotnet_in22k_ep105.torch",
             None, "vissl", (_vissl(119, 54.89),), f"{_VISSL_ZOO}:119", notes="VISSL, 105 epochs"),
    ZooEntry("clusterfit_r50_in1k_rotnet_16k", "clusterfit", "resnet50", "ImageNet-1K",
             _FB + "converted_vissl_rn50_rotnet_16kclusters_in1k_ep105.torch",
             None, "vissl", (_vissl(135, 53.63),), f"{_VISSL_ZOO}:135",
             notes="105 epochs on 16K clusters of RotNet features"),
    ZooEntry("npid_r50_lemniscate", "npid", "resnet50", "ImageNet-1K",
             _FB + "converted_vissl_rn50_npid_lemniscate_neg4k_stepLR_8gpu.torch",
             None, "torchvision", (_vissl(143, 54.99),), f"{_VISSL_ZOO}:143",
             notes=f"the NPID authors' model (lemniscate.pytorch), converted; {_TV_NOTE}"),
    ZooEntry("npid_r50_200ep_4kneg", "npid", "resnet50", "ImageNet-1K",
             _FB + "npid_1node_200ep_4kneg_npid_8gpu_resnet_23_07_20.9eb36512/"
                   "model_final_checkpoint_phase199.torch",
             None, "vissl", (_vissl(144, 52.73),), f"{_VISSL_ZOO}:144",
             notes="VISSL, 200 epochs, 4K negatives"),
    ZooEntry("npidpp_r50_800ep_32kneg", "npid", "resnet50", "ImageNet-1K",
             _FB + "npid_pp/4node_800ep_32kneg_cosine_resnet_23_07_20.75432662/"
                   "model_final_checkpoint_phase799.torch",
             None, "vissl", (_vissl(152, 56.68),), f"{_VISSL_ZOO}:152",
             notes="NPID++: VISSL, 800 epochs, 32K negatives, cosine LR. The model_zoo json "
                   "(benchmark_in1k_linear_npid_pirl.json:44) benchmarks another URL for this run: "
                   + _FB + "npid_4node_800ep_32kneg_cosine_npid++_4nodes_resnet_23_07_20.75432662/"
                   "model_final_checkpoint_phase799.torch"),
    ZooEntry("npidpp_r50w2_800ep_32kneg", "npid", "resnet50w2", "ImageNet-1K",
             _FB + "npid_4node_800ep_32kneg_cosine_rn50w2_npid++_4nodes_resnet_27_07_20.b7f4016c/"
                   "model_final_checkpoint_phase799.torch",
             None, "vissl", (_vissl(153, 62.73),), f"{_VISSL_ZOO}:153",
             notes="NPID++: VISSL, ResNet-50 twice as wide, 800 epochs, 32K negatives, cosine LR"),
    ZooEntry("pirl_r50_200ep", "pirl", "resnet50", "ImageNet-1K",
             _FB + "pirl_jigsaw_4node_200ep_pirl_jigsaw_4node_resnet_22_07_20.ffd17b75/"
                   "model_final_checkpoint_phase199.torch",
             None, "vissl", (_vissl(161, 62.55),), f"{_VISSL_ZOO}:161",
             notes="VISSL, 200 epochs, linear head"),
    ZooEntry("pirl_r50_800ep", "pirl", "resnet50", "ImageNet-1K",
             _FB + "pirl_jigsaw_4node_pirl_jigsaw_4node_resnet_22_07_20.34377f59/"
                   "model_final_checkpoint_phase799.torch",
             None, "vissl", (_vissl(162, 64.29), _pirl(39, 64.29)), f"{_VISSL_ZOO}:162",
             notes="VISSL, 800 epochs, linear head"),
    # projects/PIRL/README.md: "more PIRL models provided by authors" (MODEL_ZOO.md:164).
    ZooEntry("pirl_r50_200ep_authors", "pirl", "resnet50", "ImageNet-1K",
             _FB + "pirl/r50_200ep/model_final_checkpoint_phase199.torch",
             None, "vissl", (_pirl(37, 62.9),), f"{_PIRL_README}:37",
             notes="the PIRL authors' run, 200 epochs, linear head"),
    ZooEntry("pirl_r50_200ep_mlp_gblur", "pirl", "resnet50", "ImageNet-1K",
             _FB + "pirl/r50_200ep_mlp_gblur/model_final_checkpoint_phase199.torch",
             None, "vissl", (_pirl(38, 65.8),), f"{_PIRL_README}:38",
             notes="200 epochs, MLP head and Gaussian blur (SimCLR's improvements)"),
    ZooEntry("pirl_r50_800ep_mlp_gblur", "pirl", "resnet50", "ImageNet-1K",
             _FB + "pirl/r50_800ep_mlphead_gblur/model_final_checkpoint_phase799.torch",
             None, "vissl", (_pirl(40, 69.9),), f"{_PIRL_README}:40",
             notes="800 epochs, MLP head and Gaussian blur (SimCLR's improvements)"),
    ZooEntry("pirl_r50w2_400ep", "pirl", "resnet50w2", "ImageNet-1K",
             _FB + "pirl/w2_400ep/model_final_checkpoint_phase399.torch",
             None, "vissl", (_pirl(41, 69.3),), f"{_PIRL_README}:41",
             notes="ResNet-50 twice as wide, 400 epochs"),
    ZooEntry("pirl_r50w2_400ep_mlp_gblur", "pirl", "resnet50w2", "ImageNet-1K",
             _FB + "pirl/r50w2_400ep_mlphead_gblur/model_final_checkpoint_phase399.torch",
             None, "vissl", (_pirl(42, 70.9),), f"{_PIRL_README}:42",
             notes="ResNet-50 twice as wide, 400 epochs, MLP head and Gaussian blur"),
    ZooEntry("jigclu_r50_200ep", "jigclu", "resnet50", "ImageNet-1K",
             "https://github.com/Jia-Research-Lab/JigsawClustering/releases/download/1.0/JigClu_200e.pth",
             None, "jigclu",
             (_jigclu(63, "linear ImageNet (JigClu main_lincls.py)", "top1", 66.4),
              _jigclu(64, "semi-supervised ImageNet, 1% labels (JigClu main_semi.py)", "top1", 40.7),
              _jigclu(65, "semi-supervised ImageNet, 10% labels (JigClu main_semi.py)", "top1", 63.0),
              _jigclu(66, "COCO detection (JigClu detection/configs/R50-JigClu.yaml: Faster R-CNN R50-FPN, "
                          "SyncBN, 180k iterations)", "AP", 39.3)),
             f"{_JIGCLU}:59",
             notes="200 epochs. The README (its 'Results' column, no metric named) listed a Google Drive "
                   "file before this commit (ae59e6d: https://drive.google.com/file/d/"
                   "1_TyLacC9EcOIoC9uvRQ8dMXGXpXOO_R1/view?usp=sharing), which needs a confirmation step "
                   "and does not download through a plain HTTP client; the GitHub release it lists now "
                   "does."),
)
_BY_NAME = {e.name: e for e in ZOO_ENTRIES}
assert len(_BY_NAME) == len(ZOO_ENTRIES), "zoo entry names must be unique"


# ---------------------------------------------------------------------------------------------- lookup
def is_zoo_name(path: str) -> bool:
    return isinstance(path, str) and path.startswith(ZOO_PREFIX)


def zoo_entry(name: str) -> ZooEntry:
    """The entry called ``name`` (``zoo:`` prefix optional); ``UnknownZooNameError`` lists the known ones."""
    bare = name[len(ZOO_PREFIX):] if is_zoo_name(name) else name
    if bare not in _BY_NAME:
        raise UnknownZooNameError(
            f"no zoo entry named {bare!r}; known: {', '.join(sorted(_BY_NAME))} "
            f"(python tools/zoo.py lists them with their numbers)"
        )
    return _BY_NAME[bare]


def published_numbers(name: str) -> list[dict[str, Any]]:
    """The numbers the reference published for ``name``: ``[{"benchmark", "metric", "value", "source"}]``
    (a copy: the caller may change it)."""
    return [dict(number) for number in zoo_entry(name).published]


def zoo_cache_dir() -> str:
    """``$D2SSL_CACHE/zoo``, default ``~/.cache/d2ssl/zoo``."""
    root = os.environ.get("D2SSL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "d2ssl")
    return os.path.join(root, "zoo")


def cached_path(entry: ZooEntry, cache_dir: str | None = None) -> str:
    """Where ``entry``'s file is (or goes) in the cache: keyed by the listed URL as well as the name,
    so that an entry whose URL is corrected never reuses the bytes of the old one."""
    url_key = hashlib.sha256(entry.url.encode()).hexdigest()[:8]
    return os.path.join(cache_dir or zoo_cache_dir(), f"{entry.name}-{url_key}", entry.file_name)


def download_url(entry: ZooEntry) -> str:
    """The entry's URL, or its place under ``$D2SSL_ZOO_MIRROR`` when that is set."""
    mirror = os.environ.get("D2SSL_ZOO_MIRROR")
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.name}/{entry.file_name}"
    return entry.url


def manual_download_reason(entry: ZooEntry, url: str) -> str | None:
    if entry.manual_download:
        return entry.manual_download
    if urlsplit(url).hostname in MANUAL_DOWNLOAD_HOSTS:
        return (f"{urlsplit(url).hostname} answers a plain download with a confirmation page, not the file "
                f"(and iopath's HTTP handler cannot confirm)")
    return None


# ---------------------------------------------------------------------------------------------- fetch
def local_zoo_file(name: str, cache_dir: str | None = None, url: str | None = None, attempts: int = 3) -> str:
    """A local copy of the zoo entry ``name`` (``zoo:`` optional) whose sha256 was checked (see the
    module docstring): from the cache, else downloaded from ``url`` (default ``download_url``).

    ``attempts``: downloads tried in this call, each continuing the ``.part`` the previous one left.
    Raises ``ZooError`` (unknown name, download failed, checksum mismatch, manual download needed).
    """
    entry = zoo_entry(name)
    path = cached_path(entry, cache_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Ranks of one job, or two jobs, may ask at once: one downloads, the others then find the file.
    with _locked(path + ".lock"):
        if os.path.isfile(path):
            _check_digest(entry, path, source=f"the cached file {path}")
            return path
        source = url or download_url(entry)
        reason = manual_download_reason(entry, source)
        if reason is not None:
            raise ZooDownloadError(
                f"zoo:{entry.name} cannot be downloaded automatically from {source}: {reason}. Download it "
                f"by hand in a browser and save it as {path} (mkdir -p {os.path.dirname(path)}); it is "
                f"then checked like a download"
            )
        _download(entry, source, path, attempts)
        _check_digest(entry, path, source=source)
        return path


def _check_digest(entry: ZooEntry, path: str, source: str) -> None:
    """Checks ``path`` against the pinned sha256, else the recorded one, else records it; a mismatch
    moves the file to ``<path>.rejected`` and raises ``ZooChecksumError``."""
    record = checksum_path(path)
    recorded = _read_record(record)
    got = sha256_of(path)
    expected, against = (entry.sha256, "pinned in d2ssl.checkpoint.zoo") if entry.sha256 else (
        recorded, f"recorded at the first download in {record}")
    if expected is None:
        _write_record(path, got)
        logger.warning(
            "zoo:%s: its sha256 is not yet pinned in d2ssl.checkpoint.zoo (the reference publishes none): "
            "recorded %s of %s in %s; later loads and downloads must match it",
            entry.name, got, source, record)
        return
    if got != expected:
        rejected = path + REJECTED_SUFFIX
        os.replace(path, rejected)
        retry = "run again to download it anew"
        if not entry.sha256:
            retry += f"; if the server now serves a new file you trust, delete {record} first"
        raise ZooChecksumError(
            f"zoo:{entry.name}: the sha256 of {source} is {got}, expected {expected} ({against}); the file "
            f"was moved to {rejected} and is not used: {retry}"
        )
    if recorded != got:  # pinned, and the record beside the file (read by verify_integrity) says otherwise
        _write_record(path, got)
    if not entry.sha256:
        logger.info("zoo:%s: %s matches the sha256 recorded at its first download (%s); not yet pinned in "
                    "d2ssl.checkpoint.zoo", entry.name, source, record)


def _read_record(record: str) -> str | None:
    if not os.path.isfile(record):
        return None
    with open(record) as f:
        fields = f.read().split()
    return fields[0] if fields else None


def _write_record(path: str, digest: str) -> None:
    # sha256sum's format: what d2ssl.utils.safe_io.verify_integrity reads beside every file it loads.
    atomic_write(checksum_path(path), lambda f: f.write(f"{digest}  {os.path.basename(path)}\n"), mode="w")


@contextlib.contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(entry: ZooEntry, url: str, path: str, attempts: int) -> None:
    """Downloads ``url`` to ``path`` through ``<path>.part``, continuing a ``.part`` left before."""
    part = path + PART_SUFFIX
    error: Exception | None = None
    for _ in range(max(1, attempts)):
        try:
            _download_once(entry, url, part)
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts and resets are OSErrors
            if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 408:
                raise ZooDownloadError(f"zoo:{entry.name}: {url} answered HTTP {e.code} {e.reason}") from e
            error = e
            continue
        with open(part, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the complete file
        os.replace(part, path)
        return
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    raise ZooDownloadError(
        f"zoo:{entry.name}: downloading {url} failed ({type(error).__name__}: {error}) after {attempts} "
        f"attempt(s); {have} bytes are kept in {part}: run again to continue from there"
    ) from error


class _IncompleteDownload(OSError):
    """The connection ended before the announced length arrived."""


def _download_once(entry: ZooEntry, url: str, part: str) -> None:
    """One request: appends to ``part`` from its current size (``Range``) or rewrites it; returns only
    when ``part`` holds the whole file as announced by the server."""
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    headers = {"User-Agent": "d2ssl-zoo"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            total = _range_total(e.headers.get("Content-Range"))
            if total == have:  # the .part was complete; the rename had not happened
                return
            os.remove(part)  # longer than the file, or a server that cannot say: start over
            raise _IncompleteDownload(f"{part} does not fit the file on the server (HTTP 416)") from e
        raise
    with response:
        start = 0
        if have and response.status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != have:
                os.remove(part)  # the next attempt starts over rather than ask the same again
                raise _IncompleteDownload(f"asked for bytes from {have}, the server sent from {start}")
        elif have:
            logger.info("zoo:%s: %s ignores Range: downloading from the start", entry.name, url)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        if total is None and not response.chunked and entry.sha256 is None:
            # Without a length or chunk framing a cut connection looks like the end of the file, and
            # no pinned checksum would catch it.
            raise ZooDownloadError(
                f"zoo:{entry.name}: {url} announces no length, so a complete download cannot be told from a "
                f"cut one, and no sha256 is pinned; download it by hand and pin its sha256 in the entry"
            )
        logger.info("zoo:%s: downloading %s (%s) to %s%s", entry.name, url,
                    f"{total} bytes" if total is not None else "size unknown", part,
                    f", continuing after {start} bytes" if start else "")
        with open(part, "ab" if start else "wb") as f:
            for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                f.write(chunk)
    got = os.path.getsize(part)
    if total is not None and got != total:
        raise _IncompleteDownload(f"the connection ended after {got} of {total} bytes")


def _range_start(content_range: str | None) -> int:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(m.group(1)) if m else -1


def _range_total(content_range: str | None) -> int | None:
    m = re.fullmatch(r"bytes (?:\*|\d+-\d+)/(\d+)", (content_range or "").strip())
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------- listing
def zoo_table(cache_dir: str | None = None) -> str:
    """The entries as a Markdown table: name, method, arch, data, layout, published numbers, whether
    the sha256 is pinned and whether the file is in the cache."""
    rows = []
    for e in ZOO_ENTRIES:
        numbers = ", ".join(f"{n['metric']} {n['value']}" for n in e.published)
        cached = os.path.isfile(cached_path(e, cache_dir))
        rows.append((f"zoo:{e.name}", e.method, e.arch, e.data, e.layout, numbers,
                     "yes" if e.sha256 else "no", "yes" if cached else "no"))
    headers = ["name", "method", "arch", "data", "layout", "published", "sha256 pinned", "cached"]
    return tabulate(rows, headers=headers, tablefmt="pipe")


def describe_entry(name: str, cache_dir: str | None = None) -> str:
    """Every field of the entry ``name``, each published number with its benchmark and source, and
    where its file is cached."""
    entry = zoo_entry(name)
    lines = [f"{key}: {getattr(entry, key)}"
             for key in ("name", "method", "arch", "data", "url", "sha256", "layout", "reference", "notes")]
    lines += [f"published: {n['metric']} {n['value']} on {n['benchmark']} ({n['source']})"
              for n in entry.published]
    lines.append(f"cache: {cached_path(entry, cache_dir)}")
    return "\n".join(lines)
