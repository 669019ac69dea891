"""PEP 517 backend: setuptools, plus the startup hook `.pth` added to every wheel it builds.

A `.pth` file must sit at the top of site-packages, which setuptools cannot place (and its
editable wheels drop files outside packages), so the finished wheel is extended here and its
RECORD updated, for `pip install .` and `pip install -e .` alike.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the rest of the PEP 517 interface)


PTH = Path(__file__).with_name("lm_eval_promptopt_hook.pth")


def _add_pth(wheel_dir: str, wheel_name: str) -> str:
    wheel_path = Path(wheel_dir) / wheel_name
    data = PTH.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = wheel_path.with_suffix(".tmp")
    with zipfile.ZipFile(wheel_path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                content += f"{PTH.name},sha256={digest},{len(data)}\n".encode()
            dst.writestr(item, content)
        dst.writestr(PTH.name, data)
    tmp.replace(wheel_path)
    return wheel_name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)
