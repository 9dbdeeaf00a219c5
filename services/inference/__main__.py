from services.common.grpc_host import run_service

from .server import setup
from .settings import InferenceSettings


def main() -> None:
    run_service("inference", InferenceSettings, setup)


if __name__ == "__main__":
    main()
