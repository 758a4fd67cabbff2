"""Generated Open Inference Protocol v2 (KServe / Triton) gRPC modules; see scripts/generate_grpc.sh."""
