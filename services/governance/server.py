"""GovernanceService: RPCs arrive with the governance capability (issue 5)."""

from memos.governance.v1 import governance_pb2, governance_pb2_grpc
from services.common.placeholder import placeholder_setup

setup = placeholder_setup(
    governance_pb2_grpc.GovernanceServiceServicer,
    governance_pb2_grpc.add_GovernanceServiceServicer_to_server,
    governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"],
    "the governance capability (issue 5)",
)
