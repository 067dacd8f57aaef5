"""Security checks on the built images and a running serving container.

- No credentials or tokens in either image: layer history, environment, labels, and
  the usual credential files; none in a serving container's logs or answers either,
  even when the container is given (canary) credentials the way SageMaker could.
- The model-management API and MMS's own ports answer only inside the container.
- Every lock file pins each package with hashes, and every image installs with them.
The serving process's user (non-root) is checked in test_serve_container.py.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import requests
from containers import Server, listening_sockets

from conftest import ROOT, SERVE_IMAGE, TRAIN_IMAGE, docker, require_image

# Things that must never be baked into an image or printed by a container.
SECRET = re.compile(
    r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"                  # AWS access key ids
    r"|aws_secret_access_key|aws_session_token"
    r"|AWS_SECRET|AWS_SESSION_TOKEN"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20}"  # GitHub / GitLab tokens
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"                      # Slack tokens
    r"|[a-z][a-z0-9+.-]*://[^/\s:@\"']+:[^/\s@\"']+@"     # user:password@ in any URL
    r"|(?i:(?:password|passwd|secret|api[_-]?key|auth[_-]?token|access[_-]?token)\s*[=:]\s*\S+)"
)
PROXY_VARS = re.compile(r"^(https?_proxy|no_proxy|all_proxy|ftp_proxy)=", re.I)
CREDENTIAL_FILES = ["/root/.aws/credentials", "/root/.aws/config", "/root/.netrc",
                    "/root/.docker/config.json", "/root/.git-credentials", "/root/.pypirc",
                    "/root/.config/pip/pip.conf", "/etc/pip.conf", "/root/.pip/pip.conf",
                    "/home/model-server/.aws/credentials", "/home/model-server/.netrc"]


@pytest.fixture(scope="module", params=["train", "serve"])
def image(request) -> str:
    name = TRAIN_IMAGE if request.param == "train" else SERVE_IMAGE
    require_image(name)
    return name


def test_image_history_and_config_carry_no_credentials(image):
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    env = config.get("Env") or []
    labels = config.get("Labels") or {}
    found = [m.group(0) for text in [history, *env, *(f"{k}={v}" for k, v in labels.items())]
             for m in SECRET.finditer(text)]
    assert not found, found
    # Proxy settings (which often carry credentials) stay on the build machine.
    assert not [e for e in env if PROXY_VARS.match(e)], env
    # Build args the offline harness passes must not reach the final image's history.
    assert "PIP_FIND_LINKS=http" not in history and "PIP_INDEX_URL=http" not in history


def test_image_has_no_credential_files(image):
    probe = " ".join(f"[ -e {path} ] && echo {path};" for path in CREDENTIAL_FILES)
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                 probe + " true").stdout.split()
    assert not out, out


@pytest.fixture(scope="module")
def canary_server(trained_model):
    """A serving container given credentials in its environment, as a careless
    deployment might: none of them may appear in its logs or answers."""
    require_image(SERVE_IMAGE)
    srv = Server(SERVE_IMAGE, trained_model.root / "model",
                 "AWS_ACCESS_KEY_ID=AKIAZZZZCANARY000000",
                 "AWS_SECRET_ACCESS_KEY=canary-secret-0123456789abcdef",
                 "AWS_SESSION_TOKEN=canary-session-token-0123456789")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_management_api_answers_only_inside(canary_server):
    sockets = listening_sockets(canary_server.id)
    public = [(a, p) for a, p in sockets if a not in ("127.0.0.1", "::1")]
    assert public == [("0.0.0.0", 8080)] or public == [("::", 8080)], sockets
    internal_ports = sorted({p for a, p in sockets if a in ("127.0.0.1", "::1")})
    assert len(internal_ports) >= 2, sockets  # MMS inference and management
    # From outside (the host, over Docker's bridge), only 8080 accepts a connection.
    ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                canary_server.id).stdout.strip()
    assert ip
    for port in internal_ports:
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=2).close()
    socket.create_connection((ip, 8080), timeout=2).close()
    # And the public port does not forward management paths.
    for path in ("/models", "/models/model", "/api-description", "/predictions/model"):
        resp = requests.get(f"{canary_server.url}{path}", timeout=5)
        assert resp.status_code == 404 and resp.json()["status"] == 404, (path, resp.text)
        assert requests.post(f"{canary_server.url}{path}", timeout=5).status_code == 404
    # /metrics (the hosting contract's scrape) is read-only and carries no secrets.
    metrics = requests.get(f"{canary_server.url}/metrics", timeout=5)
    assert metrics.status_code == 200 and "dogbreed_requests_total" in metrics.text
    assert not SECRET.search(metrics.text) and "canary" not in metrics.text.lower()
    assert requests.post(f"{canary_server.url}/metrics", timeout=5).status_code == 405


def test_no_credentials_or_internals_in_logs_or_answers(canary_server):
    from dogbreed_scripts.malformed import cases, good_inputs

    answers = []
    with requests.Session() as session:
        for _, body, ctype in good_inputs()[:2]:
            answers.append(session.post(f"{canary_server.url}/invocations", data=body,
                                        headers={"Content-Type": ctype}, timeout=30))
        for case in cases()[:25]:
            headers = dict(case.headers, **({"Content-Type": case.content_type}
                                            if case.content_type is not None else {}))
            answers.append(session.post(f"{canary_server.url}/invocations", data=case.body,
                                        headers=headers, timeout=30))
        answers.append(session.get(f"{canary_server.url}/ping", timeout=5))
    logs = canary_server.logs()
    for text in [logs, *(a.text for a in answers),
                 *(f"{k}: {v}" for a in answers for k, v in a.headers.items())]:
        assert "CANARY" not in text and "canary" not in text
        assert not SECRET.search(text), SECRET.search(text).group(0)
    for answer in answers:
        server = answer.headers.get("Server", "")
        assert not re.search(r"\d", server), server  # no version in the Server header
        assert "X-Powered-By" not in answer.headers


def test_lock_files_pin_every_package_with_hashes():
    locks = sorted(ROOT.glob("*/requirements*.lock")) + sorted(ROOT.glob("*/*/requirements*.lock"))
    locks = [p for p in locks if ".venv" not in p.parts and ".cache" not in p.parts]
    assert {p.relative_to(ROOT).as_posix() for p in locks} >= {
        "container_train/requirements.lock", "container_serve/requirements.lock",
        "container_serve/requirements-gpu.lock", "tests/requirements.lock"}
    for lock in locks:
        entries = re.split(r"\n(?=[A-Za-z0-9])", Path(lock).read_text())
        packages = [e for e in entries if e.strip() and not e.lstrip().startswith(("#", "-"))]
        assert packages, lock
        for entry in packages:
            name = entry.split()[0]
            assert "==" in name, f"{lock.name}: {name} is not pinned"
            assert "--hash=sha256:" in entry, f"{lock.name}: {name} has no hash"


def test_images_install_only_with_hashes():
    """Every package comes from a hash-checked lock; the one exception is the project's
    own contract package, built from the source tree with nothing fetched."""
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        installs = re.findall(r"pip install[^\n]*", text)
        assert installs, dockerfile
        for line in installs:
            if line.rstrip().endswith(" /src/contract"):
                assert all(flag in line for flag in ("--no-index", "--no-deps")), line
                continue
            assert "--require-hashes" in line, (dockerfile.name, line)
