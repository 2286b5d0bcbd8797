"""A client of Baton's admin API from another language.

Generates Python stubs from proto/admin.proto with grpcio-tools, then against a running
node: lists the services through gRPC server reflection, calls Status, streams the
events of one message, and parses /metrics with prometheus_client's text parser,
checking every metric name the README's Metrics table promises. Prints one line per check; exits
non-zero on the first failure.

    python3 tests/python/admin_client.py --proto-dir proto --admin 127.0.0.1:7401 \
        --http 127.0.0.1:9401 --message-id ID [--token T]
"""

import argparse
import importlib
import sys
import tempfile
import urllib.request

import grpc
from grpc_tools import protoc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

CONTRACT_METRICS = [
    "baton_messages_received_total",
    "baton_messages_delivered_total",
    "baton_messages_deferred_total",
    "baton_messages_bounced_total",
    "baton_queue_messages",
    "baton_raft_leader",
    "baton_raft_commit_index",
    "baton_smtp_sessions",
]


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call, reflection's included."""

    def __init__(self, token: str):
        self.token = token

    def _details(self, details):
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def generate(proto_dir: str):
    out = tempfile.mkdtemp(prefix="baton-py-")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"{proto_dir}/admin.proto",
        ]
    )
    if code != 0:
        sys.exit(f"protoc failed on {proto_dir}/admin.proto: {code}")
    sys.path.insert(0, out)
    return importlib.import_module("admin_pb2"), importlib.import_module("admin_pb2_grpc")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--proto-dir", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--message-id", required=True)
    p.add_argument("--token", default="")
    a = p.parse_args()

    pb, pb_grpc = generate(a.proto_dir)
    raw = grpc.insecure_channel(a.admin)
    grpc.channel_ready_future(raw).result(timeout=10)
    channel = grpc.intercept_channel(raw, BearerToken(a.token)) if a.token else raw
    metadata = []

    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "baton.admin.v1.Admin" in services, services
    print("reflection:", ", ".join(sorted(services)))

    stub = pb_grpc.AdminStub(channel)
    status = stub.Status(pb.StatusRequest(), metadata=metadata, timeout=10)
    assert status.leader_id > 0, status
    assert len(status.members) >= 1, status
    print(f"status: node {status.node_id}, leader {status.leader_id}, term {status.term}, "
          f"applied {status.applied_index}, {len(status.members)} member(s)")

    events = list(
        stub.StreamEvents(
            pb.StreamEventsRequest(after=0, follow=False, message_id=a.message_id),
            metadata=metadata,
            timeout=10,
        )
    )
    kinds = [e.kind for e in events]
    assert kinds[:1] == ["received"], kinds
    assert "delivered" in kinds, kinds
    assert all(e.position > 0 for e in events), events
    print("events:", " -> ".join(kinds))

    text = urllib.request.urlopen(f"http://{a.http}/metrics", timeout=10).read().decode()
    samples = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.add(s.name)
    missing = [m for m in CONTRACT_METRICS if m not in samples]
    assert not missing, f"missing from /metrics: {missing}"
    print(f"metrics: {len(samples)} sample names parsed; every contract name present")


if __name__ == "__main__":
    main()
