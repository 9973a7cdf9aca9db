"""Caffe's protobuf schema and its Python message classes.

This folder installs as the Python package ``caffe_proto`` (a bare ``proto``
would collide with the widely installed proto-plus package):

    from caffe_proto import caffe_pb2
    net = caffe_pb2.NetParameter()

``caffe.proto`` is the schema; ``caffe_pb2.py`` is generated from it by
``build.py`` and needs no protoc at run time.
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
