"""Compose mode finds its compose at run time: the Docker CLI's plugin (v2) where it works, else docker-compose
(v1). Fake commands on PATH stand for the real ones (which one a machine has is what is being decided)."""
import stat

import pytest

from harness.chaos.compose import compose_command
from harness.infra import InfraError


def fake(directory, name, exit_code):
    path = directory / name
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def path_of(tmp_path, monkeypatch):
    def only(**commands):
        for name, exit_code in commands.items():
            fake(tmp_path, name.replace("_", "-"), exit_code)
        # Only the fakes: the machine's own docker / docker-compose must not be found (the fakes' #!/bin/sh
        # needs no PATH).
        monkeypatch.setenv("PATH", str(tmp_path))
    return only


def test_the_docker_cli_with_its_compose_plugin_is_preferred(path_of):
    path_of(docker=0, docker_compose=0)
    assert compose_command() == ["docker", "compose"]


def test_docker_compose_v1_is_used_where_the_docker_cli_has_no_compose_plugin(path_of):
    path_of(docker=1, docker_compose=0)
    assert compose_command() == ["docker-compose"]


def test_docker_compose_v1_alone_is_enough(path_of):
    path_of(docker_compose=0)
    assert compose_command() == ["docker-compose"]


def test_without_either_compose_the_error_says_what_to_install(path_of):
    path_of()
    with pytest.raises(InfraError, match=r"`docker compose` \(v2\) or `docker-compose` \(v1\)"):
        compose_command()
