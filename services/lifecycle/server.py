"""LifecycleService: RPCs arrive with the lifecycle and parametric-memory capability (issue 6)."""

from memos.lifecycle.v1 import lifecycle_pb2, lifecycle_pb2_grpc
from services.common.placeholder import placeholder_setup

setup = placeholder_setup(
    lifecycle_pb2_grpc.LifecycleServiceServicer,
    lifecycle_pb2_grpc.add_LifecycleServiceServicer_to_server,
    lifecycle_pb2.DESCRIPTOR.services_by_name["LifecycleService"],
    "the lifecycle and parametric-memory capability (issue 6)",
)
