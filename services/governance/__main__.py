from services.common.grpc_host import run_service

from .server import setup
from .settings import GovernanceSettings


def main() -> None:
    run_service("governance", GovernanceSettings, setup)


if __name__ == "__main__":
    main()
