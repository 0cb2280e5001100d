"""proto/ is enough for a client in any language: the googleapis files that the store's error
details use are shipped beside the contract, compile with nothing but proto/ and protoc's
well-known types, and define the same messages the store really sends."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
# What the store puts on the wire with an error: google.rpc.Status with BadRequest details.
USED = {
    "google.rpc.Status": status_pb2.Status.DESCRIPTOR,
    "google.rpc.BadRequest": error_details_pb2.BadRequest.DESCRIPTOR,
    "google.rpc.BadRequest.FieldViolation": error_details_pb2.BadRequest.FieldViolation.DESCRIPTOR,
    "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo.DESCRIPTOR,
}


def _compile_from_proto_dir_alone(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    well_known = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "set.pb"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--descriptor_set_out={out}",
        *protos,
    ]
    assert protoc.main(args) == 0, "proto/ does not compile on its own"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _messages(files: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for file in files.file:
        for message in file.message_type:
            walk(file.package, message)
    return found


def test_the_error_details_messages_ship_with_the_contract(tmp_path):
    shipped = _messages(_compile_from_proto_dir_alone(tmp_path))
    for name, runtime in USED.items():
        assert name in shipped, f"{name} is not defined under proto/"
        repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
        fields = {f.number: (f.name, f.type, f.label == repeated) for f in shipped[name].field}
        expected = {f.number: (f.name, f.type, f.is_repeated) for f in runtime.fields}
        assert fields == expected, name
