import pytest

from harness.compose import PodmanService, setup_machine


@pytest.fixture(scope="session")
def podman_machine():
    """podman, docker-compose and the stand-in images installed; podman's Docker-compatible socket open."""
    setup_machine()
    service = PodmanService().start()
    yield service
    service.stop()
