"""An in-memory stand-in for the Hugging Face Hub HTTP API, for offline tests.

It speaks the subset of endpoints huggingface_hub uses to create a repo, a branch
and a commit (every file answered ``uploadMode: "regular"``, so contents arrive
base64-inline and no LFS/Xet transfer happens), and to list and download files.
Shapes follow the installed huggingface_hub (``_commit_api``, ``hf_api``,
``file_download``). It binds 127.0.0.1 only, on a free port, in a thread.

Use the ``fake_hub`` fixture: it points huggingface_hub at the server and isolates
its cache and token files under ``tmp_path``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
import yaml

__all__ = ["FakeHub", "FakeRepo", "fake_hub"]

DEFAULT_USER = "user"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """A model repo: commits are full file trees, branches point at commits."""

    repo_id: str
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


@dataclass
class FakeHub:
    """The server state plus what clients sent, for assertions.

    Attributes:
        repos: Repos by id.
        commits: One dict per commit request: repo_id, revision, summary, files (paths
            added in that commit), kinds (NDJSON line keys).
        requests: ``(method, path)`` of every request, in order.
        auth_headers: Every ``Authorization`` header received.
        unknown: Requests no handler answered (404), so tests can assert there are none.
        required_token: When set, write endpoints answer 401 to any other token.
        echo_auth_in_errors: Put the received Authorization header in 401 bodies, like a
            careless proxy might, to test that callers redact it from their messages.
    """

    required_token: str | None = None
    echo_auth_in_errors: bool = False
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    # -- state helpers ---------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def new_commit(self, repo: FakeRepo, parent: str | None, changes: dict[str, bytes | None]) -> str:
        tree = dict(repo.commits[parent]) if parent else {}
        for path, data in changes.items():
            if data is None:
                tree.pop(path, None)
            else:
                tree[path] = data
        seed = json.dumps([parent, len(repo.commits), sorted(tree)]).encode()
        sha = hashlib.sha1(seed + b"".join(tree[p] for p in sorted(tree))).hexdigest()
        repo.commits[sha] = tree
        return sha


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the shared :class:`FakeHub` state (``state``)."""

    state: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature; stay quiet in test output
        pass

    # -- plumbing --------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None, head=False):
        headers = dict(headers or {})
        headers["X-Error-Message"] = message
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _authorized(self) -> bool:
        required = self.state.required_token
        return required is None or self.headers.get("Authorization") == f"Bearer {required}"

    def _unauthorized(self):
        message = "Invalid credentials in Authorization header"
        body = {"error": message}
        if self.state.echo_auth_in_errors:  # in the body only, which is what ends up in error messages
            body["error"] += f" (got {self.headers.get('Authorization')})"
        return self._json(401, body, {"X-Error-Message": message})

    def _readable(self, repo: FakeRepo) -> bool:
        """Private repos are hidden (as missing) from requests without a valid token."""
        return not repo.private or (self.headers.get("Authorization") is not None and self._authorized())

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        # Split before unquoting: revisions arrive URL-quoted and may contain "/".
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        with self.state._lock:
            self.state.requests.append((method, split.path))
            if self.headers.get("Authorization"):
                self.state.auth_headers.append(self.headers["Authorization"])
        body = self._body() if method == "POST" else b""
        handled = self._route(method, parts, body)
        if handled is False:
            with self.state._lock:
                self.state.unknown.append((method, split.path))
            self._error(404, f"fake hub: no handler for {method} {split.path}", head=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    # -- routing ---------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], body: bytes):
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4] if len(parts) > 4 else None, parts[5:]
            repo = self.state.repos.get(repo_id)
            if repo is None or not self._readable(repo):
                return self._error(404, "Repository not found", "RepoNotFound")
            if method == "GET" and action in (None, "revision"):
                return self._model_info(repo, "/".join(rest) or "main")
            if method == "GET" and action == "tree":
                return self._tree(repo, rest[0] if rest else "main")
            if method == "POST" and action in ("preupload", "commit", "branch"):
                if not self._authorized():
                    return self._unauthorized()
                revision = "/".join(rest)
                if action == "branch":
                    return self._create_branch(repo, revision, json.loads(body or b"{}"))
                if repo.resolve(revision) is None:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                if action == "preupload":
                    return self._preupload(json.loads(body))
                return self._commit(repo, revision, body)
            return False
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head=method == "HEAD")
        return False

    # -- endpoints -------------------------------------------------------------------
    def _create_repo(self, payload: dict):
        if not self._authorized():
            return self._unauthorized()
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
        url = f"{self.state.url}/{repo_id}"
        with self.state._lock:
            if repo_id in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            repo = FakeRepo(repo_id, private=payload.get("visibility") == "private")
            # The Hub starts every repo with a commit holding .gitattributes.
            repo.branches["main"] = self.state.new_commit(
                repo, None, {".gitattributes": b"*.safetensors filter=lfs\n"}
            )
            self.state.repos[repo_id] = repo
        return self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict):
        content = payload.get("content", "")
        try:
            if content.startswith("---"):
                yaml.safe_load(content.split("---", 2)[1])
        except yaml.YAMLError as err:
            return self._json(400, {"errors": [{"message": str(err)}]})
        return self._json(200, {"errors": [], "warnings": []})

    def _model_info(self, repo: FakeRepo, revision: str):
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        return self._json(200, {"id": repo.repo_id, "sha": sha, "private": repo.private, "siblings": siblings})

    def _tree(self, repo: FakeRepo, revision: str):
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        entries = [
            {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha(data)}
            for p, data in sorted(repo.commits[sha].items())
        ]
        return self._json(200, entries)

    def _create_branch(self, repo: FakeRepo, branch: str, payload: dict):
        with self.state._lock:
            if branch in repo.branches:
                return self._error(409, "Reference already exists")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                return self._error(404, "Invalid starting point", "RevisionNotFound")
            repo.branches[branch] = start
        return self._json(200, {})

    def _preupload(self, payload: dict):
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]
        return self._json(200, {"files": files, "commitOid": None})

    def _commit(self, repo: FakeRepo, revision: str, body: bytes):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        changes: dict[str, bytes | None] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                changes[value["path"]] = None
            elif key != "header":
                return self._error(400, f"fake hub: unsupported commit operation {key!r}")
        with self.state._lock:
            if revision not in repo.branches:
                return self._error(400, f"fake hub: can only commit to a branch, not {revision!r}")
            sha = self.state.new_commit(repo, repo.branches[revision], changes)
            repo.branches[revision] = sha
            self.state.commits.append(
                {
                    "repo_id": repo.repo_id,
                    "revision": revision,
                    "summary": header["summary"],
                    "files": sorted(p for p, d in changes.items() if d is not None),
                    "kinds": sorted({line["key"] for line in lines}),
                }
            )
        url = f"{self.state.url}/{repo.repo_id}/commit/{sha}"
        return self._json(200, {"success": True, "commitOid": sha, "commitUrl": url})

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool):
        repo = self.state.repos.get(repo_id)
        if repo is None or not self._readable(repo):
            return self._error(404, "Repository not found", "RepoNotFound", head=head)
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        data = repo.commits[sha].get(path)
        if data is None:
            return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha}, head=head)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha(data)}"',
        }
        return self._send(200, data, headers, head=head)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running :class:`FakeHub` that huggingface_hub talks to, with a private HF_HOME.

    huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and friends once, at import,
    into ``huggingface_hub.constants``; setting the environment alone is too late, so
    the derived constants are patched too. Tokens from the environment or a login
    cache are removed so no real credential is ever sent.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    hub = FakeHub().start()
    home = tmp_path / "hf_home"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(home))
    patched = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, value in patched.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    # Module-level helpers (huggingface_hub.file_exists, used by peft, ...) are bound
    # methods of one HfApi built at import, which captured the endpoint then.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    if hasattr(constants, "HF_URL_HOSTS"):
        monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}))
    _http.close_session()  # pooled connections must not outlive a server
    try:
        yield hub
    finally:
        _http.close_session()
        hub.stop()
