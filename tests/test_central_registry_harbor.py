"""The central service's registry admin on Harbor, through its REST API v2.0.

Harbor cannot run here, so :mod:`support.harbor_standin` (a FastAPI app following Harbor's swagger,
served by uvicorn on 127.0.0.1) plays Harbor's REST API and performs its artifact copies on
the session's real ``docker-registry``. Trains are pushed with the helpers of
``test_central_registry_plain.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import requests
from support.harbor_standin import ADMIN_PASSWORD, HarborStandIn, serve
from test_central_registry_plain import MiB, assert_copied, new_id, push_train

from pht_airflow.central.registry import HarborAdmin, RobotAccount
from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
)
from pht_airflow.oci import OCI_MANIFEST, RegistryClient

pytestmark = pytest.mark.registry


@pytest.fixture()
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


def _calls(standin: HarborStandIn, start: int) -> list[tuple[str, str]]:
    return [(r.method, r.path.removeprefix("/api/v2.0")) for r in standin.requests[start:]]


def test_standin_behaves_like_harbor_with_cookies(harbor: tuple[HarborStandIn, str]) -> None:
    """The negative control: a client that keeps cookies is refused on its second call."""
    standin, url = harbor
    naive = requests.Session()
    naive.trust_env = False
    first = naive.head(
        f"{url}/api/v2.0/projects", params={"project_name": "x"}, auth=("admin", ADMIN_PASSWORD)
    )
    assert first.status_code == 404
    assert first.headers["Set-Cookie"].startswith("sid=") and first.headers["X-Request-Id"]
    second = naive.post(
        f"{url}/api/v2.0/projects", json={"project_name": "x"}, auth=("admin", ADMIN_PASSWORD)
    )
    assert second.status_code == 403
    assert second.json() == {"errors": [{"code": "FORBIDDEN", "message": "CSRF token invalid"}]}
    assert "sid=" in standin.requests[-1].headers["cookie"]
    anonymous = requests.head(f"{url}/api/v2.0/projects", params={"project_name": "x"})
    assert anonymous.status_code == 401


def test_ensure_project_creates_once(harbor: tuple[HarborStandIn, str], admin: HarborAdmin) -> None:
    standin, _ = harbor
    assert admin.ensure_project("station-a") == "created"
    assert _calls(standin, 0) == [("HEAD", "/projects"), ("POST", "/projects")]
    assert standin.requests[0].params == {"project_name": "station-a"}
    assert standin.requests[1].json() == {
        "project_name": "station-a",
        "metadata": {"public": "false"},
    }
    assert standin.projects["station-a"].metadata["public"] == "false"

    start = len(standin.requests)
    assert admin.ensure_project("station-a") == "already there"  # looked at, not created
    assert _calls(standin, start) == [("HEAD", "/projects"), ("GET", "/projects/station-a")]
    assert standin.requests[-1].headers["x-is-resource-name"] == "true"

    standin.head_misses = 1  # HEAD says 404, but someone created it meanwhile: POST -> 409
    start = len(standin.requests)
    admin.ensure_project("station-a")
    assert [r.status for r in standin.requests[start:]] == [404, 409, 200]

    standin.projects["station-a"].metadata["public"] = "true"
    assert admin.ensure_project("station-a") == "updated"  # made private again
    assert standin.projects["station-a"].metadata["public"] == "false"
    for r in standin.requests:
        assert "cookie" not in r.headers
        assert r.headers["authorization"].startswith("Basic ")


def test_create_robot_keeps_its_secret_out_of_logs_and_repr(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    standin, url = harbor
    caplog.set_level(logging.DEBUG)
    project = f"station-{new_id()}"  # the backing registry is shared: a fresh project
    admin.ensure_project(project)
    robot = admin.create_robot(project, "station")
    assert isinstance(robot, RobotAccount)
    assert robot.name == f"robot${project}+station"
    assert robot.secret == standin.robots[robot.name].secret
    assert robot.secret not in repr(robot) and robot.secret not in str(robot)
    assert robot.secret not in caplog.text and ADMIN_PASSWORD not in caplog.text
    assert ADMIN_PASSWORD not in repr(admin)
    assert standin.requests[-1].json() == {
        "name": "station",
        "description": f"pht-airflow: pull and push in {project}",
        "duration": -1,
        "level": "project",
        "disable": False,
        "permissions": [
            {
                "kind": "project",
                "namespace": project,
                "access": [
                    {"resource": "repository", "action": "pull"},
                    {"resource": "repository", "action": "push"},
                ],
            }
        ],
    }

    # The robot can use its project, and nothing else.
    with HarborAdmin(url, robot.name, robot.secret) as as_robot:
        assert as_robot.list_repositories(project) == []
        with pytest.raises(RegistryAuthError) as refused:
            as_robot.ensure_project("station-b")
    assert refused.value.status == 403 and "creating project station-b" in str(refused.value)
    assert robot.secret not in str(refused.value)

    with pytest.raises(ConflictError) as conflict:
        admin.create_robot(project, "station")
    assert "already exists" in str(conflict.value) and "secret only" in str(conflict.value)
    assert robot.secret not in caplog.text


def test_ensure_webhook_creates_then_updates(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    standin, _ = harbor
    caplog.set_level(logging.DEBUG)
    admin.ensure_project("station-a")
    hook = "https://central.example.org/webhooks/harbor"
    secret_header = "Bearer webhook-s3cret-value"

    start = len(standin.requests)
    assert admin.ensure_webhook("station-a", hook, secret_header) == "created"
    assert _calls(standin, start) == [
        ("GET", "/projects/station-a/webhook/policies"),
        ("POST", "/projects/station-a/webhook/policies"),
    ]
    created = standin.requests[-1]
    assert created.headers["x-is-resource-name"] == "true"
    assert created.json()["event_types"] == ["PUSH_ARTIFACT"]
    assert created.json()["targets"] == [
        {
            "type": "http",
            "address": hook,
            "auth_header": secret_header,
            "skip_cert_verify": False,
            "payload_format": "Default",
        }
    ]

    start = len(standin.requests)
    assert admin.ensure_webhook("station-a", hook, secret_header) == "already there"
    assert _calls(standin, start) == [("GET", "/projects/station-a/webhook/policies")]

    start = len(standin.requests)
    assert (
        admin.ensure_webhook("station-a", hook, secret_header, payload_format="CloudEvents")
        == "updated"
    )
    policy_id = standin.policies["station-a"][0]["id"]
    assert _calls(standin, start) == [
        ("GET", "/projects/station-a/webhook/policies"),
        ("PUT", f"/projects/station-a/webhook/policies/{policy_id}"),
    ]
    assert standin.requests[-1].headers["x-is-resource-name"] == "true"
    assert len(standin.policies["station-a"]) == 1
    assert standin.policies["station-a"][0]["targets"][0]["payload_format"] == "CloudEvents"

    admin.ensure_webhook("station-a", hook, "Bearer rotated-s3cret", payload_format="CloudEvents")
    assert standin.policies["station-a"][0]["targets"][0]["auth_header"] == "Bearer rotated-s3cret"
    with pytest.raises(ConfigError):
        admin.ensure_webhook("station-a", hook, secret_header, payload_format="Slack")  # type: ignore[arg-type]
    assert "s3cret" not in caplog.text


def test_harbor_copy_train(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, client: RegistryClient
) -> None:
    standin, _ = harbor
    tid = new_id()
    station = f"station-{tid}"  # the backing registry is shared: a fresh project
    admin.ensure_project("pht-incoming")
    admin.ensure_project(station)
    # A nested repository name: Harbor wants it URL-encoded twice in the path.
    src, dst = f"pht-incoming/trains/{tid}", f"{station}/trains/{tid}"
    t = push_train(client, src, layer_bytes=MiB)

    start = len(standin.requests)
    report = admin.copy_train(src, dst, t.train.digest)
    requests_made = standin.requests[start:]
    copies = [r for r in requests_made if r.method == "POST" and r.path.endswith("/artifacts")]
    tags = [r for r in requests_made if r.method == "POST" and r.path.endswith("/tags")]
    assert copies and tags
    # The train is copied last: a station starts when `train` appears in its project, so
    # its signatures and results must be there first.
    assert copies[-1].params["from"] == f"{src}@{t.train.digest}"
    assert tags[-1].json() == {"name": "train"}
    for r in requests_made:
        if "/repositories/" in r.raw_path:
            assert f"/repositories/trains%252F{tid}/" in r.raw_path, r.raw_path
        assert r.headers.get("x-is-resource-name") == "true" or r.method == "HEAD"
        assert "cookie" not in r.headers
        assert r.headers["authorization"].startswith("Basic ")
    assert (
        copies[0].raw_path
        == f"/api/v2.0/projects/{station}/repositories/trains%252F{tid}/artifacts"
    )
    train_tag = [r for r in tags if r.json() == {"name": "train"}]
    assert train_tag and t.train.digest in train_tag[0].raw_path
    assert report.manifests + report.manifests_present == 4
    assert report.bytes_streamed == 0
    assert_copied(client, t, dst)

    # Idempotent: nothing is copied again.
    start = len(standin.requests)
    again = admin.copy_train(src, dst, t.train.digest)
    assert (again.manifests, again.manifests_present) == (0, 4)
    assert not [r for r in standin.requests[start:] if r.method != "GET"]
    assert_copied(client, t, dst)

    # Listing and deleting go through Harbor too.
    assert admin.list_repositories(station) == [dst]
    admin.delete_repository(dst)
    assert client.list_tags(dst) == []
    assert admin.list_repositories(station) == []


def test_harbor_copy_with_an_older_harbor_that_answers_409(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    standin = HarborStandIn(
        registry.host, users={"admin": ADMIN_PASSWORD}, conflict_on_existing_copy=True
    )
    with serve(standin) as url, HarborAdmin(url, "admin", ADMIN_PASSWORD) as admin:
        admin.ensure_project("pht-incoming")
        admin.ensure_project("station-b")
        tid = new_id()
        t = push_train(client, f"pht-incoming/{tid}", layer_bytes=1024)
        # Someone copied only the train before: its tag is missing in the destination.
        for blob in [t.train.config, *t.train.layers]:
            assert blob is not None
            client.mount_blob(f"station-b/{tid}", blob.digest, f"pht-incoming/{tid}")
        client.put_manifest(f"station-b/{tid}", t.train.digest, t.train.raw, OCI_MANIFEST)
        standin._known[f"station-b/{tid}"] = {t.train.digest}
        report = admin.copy_train(f"pht-incoming/{tid}", f"station-b/{tid}", t.train.digest)
        assert report.manifests + report.manifests_present == 4
        assert_copied(client, t, f"station-b/{tid}")


def test_harbor_errors_are_clear_and_keep_secrets_out(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin
) -> None:
    standin, url = harbor
    with HarborAdmin(url, "admin", "wrong-password") as wrong:
        with pytest.raises(RegistryAuthError) as unauthorized:
            wrong.ensure_project("station-a")  # a HEAD: no error body, the status speaks
        with pytest.raises(RegistryAuthError) as unauthorized_get:
            wrong.list_repositories("station-a")
    message = str(unauthorized.value)
    assert unauthorized.value.status == 401 and "HTTP 401" in message
    assert "rejected the credentials of 'admin' while checking project station-a" in message
    assert "wrong-password" not in message and "request id" in message
    message = str(unauthorized_get.value)
    assert "UNAUTHORIZED: unauthorized" in message and "wrong-password" not in message

    admin.ensure_project("pht-incoming")
    missing = "sha256:" + "1" * 64
    with pytest.raises(NotFoundError) as not_found:
        admin.copy_train(f"pht-incoming/{new_id()}", "station-a/x", missing)
    assert missing in str(not_found.value)
    with pytest.raises(NotFoundError) as no_repo:
        admin.delete_repository(f"pht-incoming/{new_id()}")
    assert no_repo.value.status == 404 and "deleting repository" in str(no_repo.value)

    standin.inject(403, "FORBIDDEN", "CSRF token invalid", method="POST")
    with pytest.raises(RegistryAuthError, match="session cookie"):
        admin.ensure_project("station-q")
    standin.inject(412, "PRECONDITION", "the project is not empty", method="DELETE")
    with pytest.raises(RegistryError) as precondition:
        admin.delete_repository("pht-incoming/whatever")
    assert precondition.value.status == 412 and "precondition" in str(precondition.value)
    assert not precondition.value.retryable
    standin.inject(503, "SERVICE_UNAVAILABLE", "registry is read-only", method="GET")
    with pytest.raises(RegistryError) as unavailable:
        admin.list_repositories("pht-incoming")
    assert unavailable.value.retryable and "registry is read-only" in str(unavailable.value)
    for r in standin.requests:
        assert "cookie" not in r.headers


def test_harbor_admin_url_rules() -> None:
    with pytest.raises(ConfigError, match="plain http"):
        HarborAdmin("http://harbor.example.org", "admin", "pw")
    assert HarborAdmin("harbor.example.org", "a", "pw").api == "https://harbor.example.org/api/v2.0"
    assert HarborAdmin("https://h.example/api/v2.0/", "a", "pw").api == "https://h.example/api/v2.0"
    assert HarborAdmin("127.0.0.1:8080", "a", "pw").api == "http://127.0.0.1:8080/api/v2.0"
    assert HarborAdmin("http://h.example", "a", "pw", insecure=True).api.startswith("http://")
    with pytest.raises(ConfigError, match="project part"):
        HarborAdmin("h.example", "a", "pw").copy_train(
            "noproject", "station-a/x", "sha256:" + "2" * 64
        )


def test_standin_projects_and_robots_answer_as_harbors_swagger_says(
    harbor: tuple[HarborStandIn, str],
) -> None:
    """The stand-in's own answers, raw (goharbor/harbor api/v2.0/swagger.yaml and the robot
    and project handlers): what HarborAdmin relies on is what Harbor does."""
    standin, url = harbor
    api, auth = f"{url}/api/v2.0", ("admin", ADMIN_PASSWORD)
    name = f"station-{new_id()}"

    def call(method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(method, api + path, auth=auth, timeout=10, **kw)  # type: ignore[arg-type]

    created = call("POST", "/projects", json={"project_name": name})
    assert created.status_code == 201
    assert created.headers["Location"] == f"/api/v2.0/projects/{standin.projects[name].id}"
    duplicate = call("POST", "/projects", json={"project_name": name})
    assert duplicate.status_code == 409
    assert duplicate.json()["errors"][0]["code"] == "CONFLICT"
    assert call("HEAD", "/projects", params={"project_name": name}).status_code == 200
    assert call("HEAD", "/projects", params={"project_name": name + "-x"}).status_code == 404

    access = [{"resource": "repository", "action": "pull"}]
    body = {"name": "r1", "level": "project", "duration": -1,
            "permissions": [{"kind": "project", "namespace": name, "access": access}]}  # fmt: skip
    robot = call("POST", "/robots", json=body)
    assert robot.status_code == 201
    assert set(robot.json()) == {"id", "name", "secret", "creation_time", "expires_at"}
    robot_id, secret = robot.json()["id"], robot.json()["secret"]
    assert robot.headers["Location"] == f"/api/v2.0/robots/{robot_id}"
    assert robot.json()["name"] == f"robot${name}+r1"
    assert call("POST", "/robots", json=body).status_code == 409
    no_access = {**body, "name": "r2", "permissions": [{**body["permissions"][0], "access": []}]}  # type: ignore[index, dict-item]
    assert call("POST", "/robots", json=no_access).status_code == 400

    without_project = call("GET", "/robots", params={"q": "Level=project"})
    assert without_project.status_code == 400
    assert "project ID" in without_project.json()["errors"][0]["message"]
    pid = standin.projects[name].id
    listed = call("GET", "/robots", params={"q": f"Level=project,ProjectID={pid}"})
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "1"
    [item] = listed.json()
    assert item["id"] == robot_id and item["level"] == "project" and "secret" not in item
    assert item["permissions"][0]["namespace"] == name
    assert call("GET", f"/robots/{robot_id}").json()["name"] == f"robot${name}+r1"

    as_robot = (f"robot${name}+r1", secret)
    assert requests.get(f"{api}/projects/{name}/repositories", auth=as_robot,
                        timeout=10).status_code == 200  # fmt: skip
    assert call("DELETE", f"/robots/{robot_id}").status_code == 200
    assert call("DELETE", f"/robots/{robot_id}").status_code == 404
    assert requests.get(f"{api}/projects/{name}/repositories", auth=as_robot,
                        timeout=10).status_code == 401  # fmt: skip
