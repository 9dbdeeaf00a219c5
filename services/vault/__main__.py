from services.common.grpc_host import run_service

from .server import setup
from .settings import VaultSettings


def main() -> None:
    run_service("vault", VaultSettings, setup)


if __name__ == "__main__":
    main()
