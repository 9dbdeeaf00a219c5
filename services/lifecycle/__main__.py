from services.common.grpc_host import run_service

from .server import setup
from .settings import LifecycleSettings


def main() -> None:
    run_service("lifecycle", LifecycleSettings, setup)


if __name__ == "__main__":
    main()
