"""The OIP v2 gRPC protocol: inference.proto and the stubs grpcio-tools generates from it."""
