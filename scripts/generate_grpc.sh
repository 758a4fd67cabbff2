#!/usr/bin/env bash
# Regenerate the Python gRPC modules of the local harness's Open Inference Protocol v2 service
# from mii_azure/runtime/proto/grpc_service.proto (DESIGN.md section 4). Needs grpcio-tools in the
# virtual environment (PYTHON overrides which interpreter runs protoc).
#
# Two fixes are applied to protoc's output:
#   - grpc_service_pb2_grpc.py imports its messages package-relatively (protoc writes a top-level
#     `import grpc_service_pb2`, which only works with the proto folder on sys.path);
#   - grpc_service_pb2.py registers its descriptors in a private pool instead of protobuf's default
#     one: tritonclient (and other OIP clients) register their own "grpc_service.proto" with the
#     same `inference.*` names there, and both modules must load in one process.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PROTO_DIR=mii_azure/runtime/proto

"$PYTHON" -m grpc_tools.protoc -I "$PROTO_DIR" --python_out="$PROTO_DIR" --grpc_python_out="$PROTO_DIR" \
    "$PROTO_DIR/grpc_service.proto"

sed -i 's/^import grpc_service_pb2 as /from . import grpc_service_pb2 as /' "$PROTO_DIR/grpc_service_pb2_grpc.py"
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
    "$PROTO_DIR/grpc_service_pb2.py"

grep -q '^from \. import grpc_service_pb2 as ' "$PROTO_DIR/grpc_service_pb2_grpc.py"
grep -q '_descriptor_pool\.DescriptorPool()\.AddSerializedFile(' "$PROTO_DIR/grpc_service_pb2.py"
echo "Regenerated $PROTO_DIR/grpc_service_pb2.py and grpc_service_pb2_grpc.py"
