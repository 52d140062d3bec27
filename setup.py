"""Installs tb_gradplugin: the Gradient Health callback and TensorBoard plugin."""

import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (_HERE / "tb_gradplugin" / "version.py").read_text(),
    re.M,
).group(1)

_SKLEARN = "scikit-learn>=1.5,<2"

setuptools.setup(
    name="tb-gradplugin",
    version=_VERSION,
    description="Gradient Health for TensorBoard: a Keras callback and a plugin tab.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["tb_gradplugin", "tb_gradplugin.*"]),
    package_data={"tb_gradplugin": ["static/*", "http_api.md"]},
    install_requires=[
        # The callback's one-pass reduction of large gradients on a CPU.
        "numba>=0.60,<1",
        "numpy>=1.26,<3",
        "protobuf>=4.25,<8",
        "tensorboard>=2.16,<2.22",
        "tensorflow>=2.16,<2.22",
        "werkzeug>=2.3,<4",
    ],
    extras_require={
        # The demo's real data: scikit-learn ships the handwritten digits.
        "demo": [_SKLEARN],
        # The tests run the demo.
        "test": [
            "playwright>=1.45,<2",
            "pytest>=8,<10",
            "ruff>=0.6,<1",
            _SKLEARN,
        ],
    },
    entry_points={
        "tensorboard_plugins": [
            "gradient_health = tb_gradplugin.plugin:GradientHealthLoader",
        ],
        "console_scripts": [
            "tb-gradhealth = tb_gradplugin.cli:main",
        ],
    },
)
