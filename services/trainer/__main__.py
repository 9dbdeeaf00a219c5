from services.common.grpc_host import run_service

from .server import setup
from .settings import TrainerSettings


def main() -> None:
    run_service("trainer", TrainerSettings, setup)


if __name__ == "__main__":
    main()
