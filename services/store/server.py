"""StoreService: RPCs arrive with cube export, import and sharing (a later issue)."""

from memos.store.v1 import store_pb2, store_pb2_grpc
from services.common.placeholder import placeholder_setup

setup = placeholder_setup(
    store_pb2_grpc.StoreServiceServicer,
    store_pb2_grpc.add_StoreServiceServicer_to_server,
    store_pb2.DESCRIPTOR.services_by_name["StoreService"],
    "cube export, import and sharing (a later issue)",
)
