"""Benchmarks of ackbot against a gRPC echo ceiling and a Redis Streams peer (`make bench`)."""
