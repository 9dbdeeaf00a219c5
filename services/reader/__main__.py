from services.common.grpc_host import run_service

from .server import setup
from .settings import ReaderSettings


def main() -> None:
    run_service("reader", ReaderSettings, setup)


if __name__ == "__main__":
    main()
