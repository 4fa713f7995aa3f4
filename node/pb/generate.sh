#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC modules from our .proto files (run from anywhere).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. node/pb/kv.proto node/pb/auth.proto node/pb/rpc.proto node/pb/admin.proto
