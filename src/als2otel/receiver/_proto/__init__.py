"""Generated modules of our ALS wire-format .proto files (scripts/gen_proto.sh)."""
