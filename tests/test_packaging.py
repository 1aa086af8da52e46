"""A non-editable wheel install carries the configs: `bigmodel finetune --cfg job` works
from a fresh virtual environment, away from the repository."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _site_packages() -> list[str]:
    """Where this interpreter's installed packages are: its site-packages (a virtual
    environment's own where the tests run in one) and, if present, the user's."""
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    return [p for p in [*site.getsitepackages(), user] if p and Path(p).is_dir()]


@pytest.mark.slow
def test_wheel_ships_configs_and_runs(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("bigmodel-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("bigmodel_cli/conf/finetune.yaml", "bigmodel_cli/conf/model/lstm.yaml",
                   "bigmodel_cli/conf/hydra/job_logging/bigmodel.yaml", "bigmodel_cli/cli.py"):
        assert needed in names, needed

    venv = tmp_path / "venv"
    # The running interpreter's site-packages provide the dependencies, through a .pth file
    # (--system-site-packages would give the base interpreter's, which a test run from a
    # virtual environment does not use); the package itself comes from the wheel. Paths a
    # .pth file adds do not have their own .pth files read, so the repository's editable
    # install stays out.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    venv_site = sysconfig.get_path("purelib", vars={"base": str(venv)})
    Path(venv_site, "outer_site_packages.pth").write_text("\n".join(_site_packages()) + "\n")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                          "--force-reinstall", str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import bigmodel_cli, bigmodel_cli.config as c; print(bigmodel_cli.__file__); print(c.conf_dir())"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    module_file, conf = where.stdout.split()
    assert module_file.startswith(str(venv)) and conf.startswith(str(venv)), where.stdout
    result = subprocess.run([str(venv / "bin" / "bigmodel"), "finetune", "model=fasttext", "--cfg", "job"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FastTextEncoder" in result.stdout
    help_ = subprocess.run([str(venv / "bin" / "bigmodel"), "finetune", "--help"],
                           capture_output=True, text=True, cwd=tmp_path)
    models = next(line for line in help_.stdout.splitlines() if line.startswith("model: "))
    assert {"bert", "cnn", "fasttext", "gpt", "hf", "lstm", "mlp", "vit"} <= set(models[7:].split(", "))
