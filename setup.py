"""Packaging for the SegNet Caffe-to-PyTorch tools.

PyTorch is required as ``torch>=2.1``; install the build that suits your
machine first (a CPU-only machine: ``pip install torch --index-url
https://download.pytorch.org/whl/cpu``), or pip will choose its default build.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

setup(
    name="segnet-caffe",
    version="0.1.0",
    description="Run, evaluate and fine-tune SegNet Caffe models in PyTorch, faithful to caffe-segnet",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["caffe_proto", "converter", "converter.layers", "segnet"],
    # The schema folder is proto/; its import name is caffe_proto (see proto/__init__.py).
    package_dir={"caffe_proto": "proto"},
    package_data={"caffe_proto": ["caffe.proto"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.23",
        # 4.21 brought the fast upb runtime; caffe_pb2 is tested from 4.21 to 7.x.
        "protobuf>=4.21,<8",
        "h5py>=3.6",
        "scipy>=1.10",
        "pillow>=9.0",
        "tqdm>=4.60",
    ],
    extras_require={
        # grpcio-tools lets the tests check that proto/caffe_pb2.py matches caffe.proto;
        # the ONNX packages let them check the ONNX export.
        "test": ["pytest>=7", "grpcio-tools>=1.60", "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        "dev": ["pytest>=7", "grpcio-tools>=1.60"],
    },
    entry_points={"console_scripts": ["segnet-convert=converter.cli:main"]},
)
