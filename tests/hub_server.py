"""A stand-in for the Hugging Face Hub on 127.0.0.1: the few API calls a release push makes, every request recorded.

Point `huggingface_hub` at it with `HF_ENDPOINT=<stub.endpoint>`. It serves what `doge_dagster.release.push_release`
calls through `HfApi` (see huggingface_hub's hf_api.py and _commit_api.py):

- `POST /api/repos/create` (`create_repo`): `{"name", "organization", "visibility"?, "type"?}`, 409 when it exists;
- `GET /api/models/<org>/<name>[/revision/<rev>]` (`repo_info`): id, private, sha and the files as `siblings`;
- `POST /api/validate-yaml` (`create_commit` checks a README.md's front matter first): parses it as YAML;
- `POST /api/models/<org>/<name>/preupload/<rev>`: answers `regular` for every file, so each one travels inline,
  base64-encoded, in the commit payload (the LFS/Xet transfer is huggingface_hub's own, not exercised here);
- `POST /api/models/<org>/<name>/commit/<rev>`: the NDJSON commit (`header`, `file`, `deletedFile` lines);
- `POST /api/models/<org>/<name>/tag/<rev>` (`create_tag`): `{"tag", "message"?}`, 409 when it exists.

Anything else answers 404 and is recorded too, so a test sees every call. Requests without the expected
`Authorization: Bearer <token>` answer 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class RecordedRequest:
    """One request as the stub received it."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def ndjson(self) -> list[dict[str, Any]]:
        """The body parsed as newline-delimited JSON (a commit)."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class StubRepo:
    """A model repo: its visibility, files on `main`, commits and tags."""

    private: bool
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": b"*.safetensors filter=lfs\n"})
    commits: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        """The sha of `main`'s last commit (a fixed one before the first)."""
        return self.commits[-1] if self.commits else "0" * 40


class HubStub:
    """The stand-in Hub: start it, point HF_ENDPOINT at `endpoint`, read `requests` and `repos` afterwards."""

    def __init__(self, token: str):
        self.token = token
        self.requests: list[RecordedRequest] = []
        self.repos: dict[str, StubRepo] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The stub's base URL, for HF_ENDPOINT."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- the API ----------------------------------------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> tuple[int, Any]:
        """The status and JSON answer to one request."""
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        path = unquote(urlsplit(request.path).path)
        routes = (
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>.+))?", self._repo_info),
            ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>.+)", self._preupload),
            ("POST", rf"/api/models/{REPO}/commit/(?P<revision>.+)", self._commit),
            ("POST", rf"/api/models/{REPO}/tag/(?P<revision>.+)", self._tag),
        )
        for method, pattern, action in routes:
            match = re.fullmatch(pattern, path)
            if request.method == method and match:
                with self._lock:
                    return action(request, **match.groupdict())
        return 404, {"error": f"the stub Hub does not serve {request.method} {path}"}

    def _repo(self, repo: str) -> StubRepo | None:
        return self.repos.get(repo)

    def _create_repo(self, request: RecordedRequest) -> tuple[int, Any]:
        payload = request.json()
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo}"}
        self.repos[repo] = StubRepo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.endpoint}/{repo}", "name": repo}

    def _validate_yaml(self, request: RecordedRequest) -> tuple[int, Any]:
        content = request.json()["content"]
        front = content.split("---", 2)[1] if content.startswith("---") else ""
        try:
            yaml.safe_load(front)
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": str(error)}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _repo_info(self, request: RecordedRequest, repo: str, revision: str | None = None) -> tuple[int, Any]:
        found = self._repo(repo)
        if found is None:
            return 404, {"error": "Repository not found"}
        siblings = [{"rfilename": name} for name in sorted(found.files)]
        return 200, {"id": repo, "private": found.private, "sha": found.head, "siblings": siblings}

    def _preupload(self, request: RecordedRequest, repo: str, revision: str) -> tuple[int, Any]:
        if self._repo(repo) is None:
            return 404, {"error": "Repository not found"}
        files = [
            {"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for entry in request.json()["files"]
        ]
        return 200, {"files": files, "commitOid": self.repos[repo].head}

    def _commit(self, request: RecordedRequest, repo: str, revision: str) -> tuple[int, Any]:
        found = self._repo(repo)
        if found is None:
            return 404, {"error": "Repository not found"}
        if revision != "main":
            return 400, {"error": f"the stub Hub commits to main only, not {revision!r}"}
        lines = request.ndjson()
        if not lines or lines[0].get("key") != "header":
            return 400, {"error": "the commit payload must start with a header line"}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value.get("encoding") == "base64":
                found.files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                found.files.pop(value["path"], None)
            else:
                return 400, {"error": f"the stub Hub does not take {line['key']!r} operations"}
        digest = hashlib.sha1(found.head.encode())
        for name, content in sorted(found.files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
        found.commits.append(digest.hexdigest())
        return 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{found.head}", "commitOid": found.head}

    def _tag(self, request: RecordedRequest, repo: str, revision: str) -> tuple[int, Any]:
        found = self._repo(repo)
        if found is None:
            return 404, {"error": "Repository not found"}
        tag = request.json()["tag"]
        if tag in found.tags:
            return 409, {"error": f"tag {tag} already exists"}
        if revision not in found.commits:
            return 404, {"error": f"revision {revision} not found"}
        found.tags[tag] = revision
        return 200, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    self.command, self.path, {key.lower(): value for key, value in self.headers.items()}, body
                )
                with stub._lock:
                    stub.requests.append(request)
                status, answer = stub.handle(request)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("X-Error-Message", str(answer.get("error", "")))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # http.server's method names

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded instead of printed

        return Handler
