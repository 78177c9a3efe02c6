"""The wheel installs kernels/ as fusedrnn.kernels and never as a top-level `kernels`."""
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_installed_package_layout():
    import fusedrnn
    import fusedrnn.kernels
    assert pathlib.Path(fusedrnn.kernels.__file__).parent == ROOT / "kernels"
    assert pathlib.Path(fusedrnn.__file__).parent == ROOT / "fusedrnn"


def test_wheel_has_no_top_level_kernels(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = tmp_path.glob("fusedrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fusedrnn"}, tops
    assert "fusedrnn/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names)
