"""The installed detectron2 provides what d2ssl uses, and importing d2ssl registers its pieces."""

import subprocess
import sys

import pytest

from d2ssl.utils.env import REQUIRED_DETECTRON2_API, Detectron2InstallError, check_detectron2


def test_detectron2_exposes_everything_d2ssl_uses():
    version = check_detectron2()
    assert version.count(".") >= 1


def test_check_names_the_missing_attribute(monkeypatch):
    import detectron2.engine

    monkeypatch.delattr(detectron2.engine, "launch")
    with pytest.raises(Detectron2InstallError, match=r"detectron2\.engine\.launch"):
        check_detectron2()


def test_required_api_lists_the_registries_lazyconfig_launch_and_checkpointer():
    names = {attr for _, attr in REQUIRED_DETECTRON2_API}
    assert {"META_ARCH_REGISTRY", "LazyConfig", "launch", "DetectionCheckpointer"} <= names


def test_import_d2ssl_registers_meta_archs_and_datasets():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import META_ARCH_REGISTRY

    import d2ssl  # noqa: F401

    assert "Jigsaw" in META_ARCH_REGISTRY
    assert "fashion_mnist_train" in DatasetCatalog.list()


def test_our_tools_package_is_not_shadowed_by_detectron2_wheel():
    # The sal-detectron2 wheel ships a top-level `tools` package; the setup installs only detectron2/.
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; s=u.find_spec('tools'); print(s and s.origin)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert "site-packages" not in out


def test_module_check_runs_as_a_command():
    cmd = [sys.executable, "-W", "ignore", "-m", "d2ssl.utils.env"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "all d2ssl needs is present" in result.stdout
