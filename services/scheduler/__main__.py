from services.common.grpc_host import run_service

from .server import setup
from .settings import SchedulerSettings


def main() -> None:
    run_service("scheduler", SchedulerSettings, setup)


if __name__ == "__main__":
    main()
