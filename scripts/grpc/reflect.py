"""Asks a gRPC server what it serves, the way Python tools do (grpc.reflection.v1alpha):

    $(scripts/grpc/venv) scripts/grpc/reflect.py 127.0.0.1:50051

Prints JSON: every service, and the methods of each anom.v1 service as read from the file
descriptors the server sends back.
"""
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
database = ProtoReflectionDescriptorDatabase(channel)
services = sorted(database.get_services())
pool = DescriptorPool(database)
methods = {}
for name in services:
    if name.startswith("anom.v1."):
        service = pool.FindServiceByName(name)
        methods[name] = sorted(m.name for m in service.methods)
print(json.dumps({"services": services, "methods": methods}))
