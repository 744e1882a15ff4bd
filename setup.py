"""Packaging of tf-dcn. Build the wheel with `make wheel` (it compiles the ops first and gives the
wheel its manylinux tag through auditwheel; see build_pip_pkg.sh).

TensorFlow is not a requirement of the wheel but an extra, as tensorflow-addons and tensorflow-io
do: ``tensorflow`` and ``tensorflow-cpu`` are different distributions of the same module, and a
hard requirement on one would install it over the other. ``import tf_dcn`` checks the version and
says what to install (tf_dcn/_environment.py).
"""

import os
import runpy

from setuptools import find_packages, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.dist import Distribution

_VERSION = "0.1.0"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _tensorflow_pin() -> str:
    """``==2.21.*`` for the TensorFlow the op libraries were compiled against (make build)."""
    info = runpy.run_path(os.path.join(_HERE, "tf_dcn", "_build_info.py"))
    major, minor = info["TENSORFLOW_VERSION"].split(".")[:2]
    return f"=={major}.{minor}.*"


class BinaryDistribution(Distribution):
    """The wheel carries compiled op libraries: platform specific, installed into platlib."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """The op libraries talk to TensorFlow's C++ API only and do not link libpython, so one
    wheel (``py3-none-<platform>``) serves every CPython that TensorFlow supports."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


_TF = _tensorflow_pin()

setup(
    name="tf-dcn",
    version=_VERSION,
    description="Deformable Convolutional Networks (v1, v2, deformable (PS-)RoI pooling) as "
    "TensorFlow custom ops and Keras 3 layers",
    long_description=open(os.path.join(_HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    packages=find_packages(include=["tf_dcn", "tf_dcn.*"]),
    package_data={"tf_dcn": ["*.so"]},
    python_requires=">=3.10",
    install_requires=["numpy"],
    extras_require={
        "cpu": [f"tensorflow-cpu{_TF}"],
        "gpu": [f"tensorflow[and-cuda]{_TF}"],
        "viz": ["matplotlib"],
        "detection": ["matplotlib", "pycocotools"],
        "onnx": ["onnx>=1.23", "onnxruntime>=1.31", "tf2onnx>=1.17"],
    },
    cmdclass={"bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
    zip_safe=False,
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
