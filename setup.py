"""Packaging of tf-dcn. Build the wheel with ./build_pip_pkg.sh (it compiles the ops first)."""

from setuptools import find_packages, setup
from setuptools.dist import Distribution

_VERSION = "0.1.0"


class BinaryDistribution(Distribution):
    """The wheel carries a compiled op library, so it is platform specific."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    name="tf-dcn",
    version=_VERSION,
    description="Deformable Convolutional Networks (v1, v2, deformable (PS-)RoI pooling) as "
    "TensorFlow custom ops and Keras 3 layers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["tf_dcn", "tf_dcn.*"]),
    package_data={"tf_dcn": ["*.so"]},
    python_requires=">=3.11",
    install_requires=["numpy"],
    # The op library is built against TensorFlow 2.21's ABI; choose the CPU or the CUDA wheel.
    extras_require={
        "cpu": ["tensorflow-cpu==2.21.*"],
        "gpu": ["tensorflow==2.21.*"],
        "viz": ["matplotlib"],
    },
    distclass=BinaryDistribution,
    zip_safe=False,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: C++",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Operating System :: POSIX :: Linux",
    ],
)
