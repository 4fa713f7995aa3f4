"""Generated protobuf/gRPC modules (node/pb/generate.sh): the wire types shared by node and client."""
