from services.common.grpc_host import run_service

from .server import setup
from .settings import StoreSettings


def main() -> None:
    run_service("store", StoreSettings, setup)


if __name__ == "__main__":
    main()
