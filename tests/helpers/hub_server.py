"""A loopback Hugging Face Hub for push tests: the endpoints huggingface_hub and from_pretrained really call.

No Hub-compatible server ships as a package and the machines running the tests cannot reach huggingface.co, so
this threaded stdlib server on 127.0.0.1 speaks the real protocol (create repo, validate-yaml, preupload, ndjson
commit, model info, resolve) with repos held in memory. Requests it does not know are answered 404 and recorded in
``unknown`` so a test can show what a client version started calling. Switches simulate failures: ``token`` (other
tokens get 401) and ``fail_commit`` (an HTTP status for the commit call).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from huggingface_hub import ModelCardData

#: the token the loopback Hub accepts (tests check it never reaches files or logs)
HUB_TOKEN = "hf_loopbackSecretToken0123456789"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file, which the Hub uses as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # revision name -> commit oid
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> full file tree
    messages: dict[str, str] = field(default_factory=dict)  # commit oid -> summary
    prs: int = 0


class HubServer(ThreadingHTTPServer):
    """The server object: holds repos and failure switches; `url` is the endpoint to give huggingface_hub."""

    daemon_threads = True

    def __init__(self, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token = token
        self.fail_commit: int | None = None
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[revision]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        self._send(status, {"error": message}, headers)

    def _authorized(self, write: bool) -> bool:
        """Writes need the server's token; a wrong token is refused on every call, as the Hub does."""
        auth = self.headers.get("Authorization")
        if self.server.token is None:
            return True
        if auth is None:
            return not write
        return auth == f"Bearer {self.server.token}"

    def _route(self) -> None:
        parts = urlsplit(self.path)
        segs = [unquote(s) for s in parts.path.strip("/").split("/")]
        query = parse_qs(parts.query)
        body = self._body() if self.command in ("POST", "PUT") else b""
        with self.server.lock:
            self.server.requests.append((self.command, parts.path))
        write = self.command in ("POST", "PUT")
        if not self._authorized(write):
            return self._error(401, "Invalid credentials in Authorization header")
        key = (self.command, segs[0] if segs else "")
        if key == ("POST", "api") and segs[1:] == ["repos", "create"]:
            return self._create(json.loads(body))
        if key == ("GET", "api") and segs[1:] == ["agent-harnesses"]:  # user-agent telemetry registry (2.4)
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if key == ("POST", "api") and segs[1:] == ["validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if key == ("POST", "api") and len(segs) == 6 and segs[1] == "models" and segs[4] == "preupload":
            return self._preupload(f"{segs[2]}/{segs[3]}", json.loads(body))
        if key == ("POST", "api") and len(segs) >= 6 and segs[1] == "models" and segs[4] == "commit":
            return self._commit(f"{segs[2]}/{segs[3]}", "/".join(segs[5:]), body, query)
        if key == ("POST", "api") and len(segs) >= 6 and segs[1] == "models" and segs[4] == "branch":
            return self._branch(f"{segs[2]}/{segs[3]}", "/".join(segs[5:]), json.loads(body or b"{}"))
        if key == ("GET", "api") and len(segs) >= 4 and segs[1] == "models":
            revision = "/".join(segs[5:]) if len(segs) > 5 and segs[4] == "revision" else "main"
            if len(segs) == 4 or segs[4] == "revision":
                return self._info(f"{segs[2]}/{segs[3]}", revision)
            if segs[4] == "tree" and len(segs) >= 6:  # snapshot_download lists the files
                return self._tree(f"{segs[2]}/{segs[3]}", segs[5])
        if self.command in ("GET", "HEAD") and len(segs) >= 5 and segs[2] == "resolve":
            return self._resolve(f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        with self.server.lock:
            self.server.unknown.append((self.command, self.path))
        self._error(404, f"loopback hub: no route for {self.command} {parts.path}")

    do_GET = do_HEAD = do_POST = do_PUT = _route

    # --- endpoints ------------------------------------------------------------------------------------------
    def _create(self, req: dict) -> None:
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        url = f"{self.server.url}/{repo_id}"
        with self.server.lock:
            if repo_id in self.server.repos:
                return self._send(409, {"error": "You already created this model repo", "url": url})
            repo = Repo(private=bool(req.get("private")) or req.get("visibility") == "private")
            oid = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
            repo.commits[oid] = {}
            repo.branches["main"] = oid
            repo.messages[oid] = "initial commit"
            self.server.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, req: dict) -> None:
        """Answer as the Hub does: 200, or 400 with ``errors: [{message}]`` (huggingface_hub reads that list)."""
        content = req.get("content", "")
        problem = None
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---")[1])
                if not isinstance(meta, dict):
                    problem = "YAML metadata must be a mapping"
                else:
                    ModelCardData(**meta)  # the model-index and eval-result rules huggingface_hub itself applies
            except (yaml.YAMLError, ValueError, TypeError) as e:
                problem = f"Invalid metadata: {e}"
        if problem:
            return self._send(400, {"errors": [{"message": problem}], "warnings": []}, {"X-Error-Message": problem})
        self._send(200, {"errors": [], "warnings": []})

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _preupload(self, repo_id: str, req: dict) -> None:
        if self._repo(repo_id) is not None:
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                     for f in req.get("files", [])]
            self._send(200, {"files": files, "commitOid": None})

    def _commit(self, repo_id: str, revision: str, body: bytes, query: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if self.server.fail_commit:
            return self._error(self.server.fail_commit, "Internal Error - We're working hard to fix this")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        with self.server.lock:
            if revision not in repo.branches:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            tree = dict(repo.commits[repo.branches[revision]])
            summary = ""
            for line in lines:
                value = line["value"]
                if line["key"] == "header":
                    summary = value.get("summary", "")
                elif line["key"] == "file":
                    tree[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "deletedFile":
                    tree.pop(value["path"], None)
                elif line["key"] == "deletedFolder":
                    tree = {p: d for p, d in tree.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                else:
                    return self._error(400, f"loopback hub: unsupported commit operation {line['key']}")
            oid = hashlib.sha1(repr((repo.branches[revision], sorted(tree.items()), summary)).encode()).hexdigest()
            repo.commits[oid] = tree
            repo.messages[oid] = summary
            pr_url = None
            if query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
                repo.prs += 1
                repo.branches[f"refs/pr/{repo.prs}"] = oid
                pr_url = f"{self.server.url}/{repo_id}/discussions/{repo.prs}"
            else:
                repo.branches[revision] = oid
        self._send(200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": pr_url, "success": True})

    def _branch(self, repo_id: str, branch: str, req: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        with self.server.lock:
            if branch in repo.branches:
                return self._error(409, f"Branch {branch} already exists")
            repo.branches[branch] = repo.branches[req.get("startingPoint") or "main"]
        self._send(200, {})

    def _snapshot(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
        """The repo and the commit a branch name or commit id points to; answers 404 and returns None if none."""
        repo = self._repo(repo_id)
        if repo is None:
            return None
        oid = repo.branches.get(revision, revision if revision in repo.commits else None)
        if oid is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return None
        return repo, oid

    def _info(self, repo_id: str, revision: str) -> None:
        if (found := self._snapshot(repo_id, revision)) is None:
            return
        repo, oid = found
        siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(repo.commits[oid].items())]
        self._send(200, {"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private,
                         "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

    def _tree(self, repo_id: str, revision: str) -> None:
        if (found := self._snapshot(repo_id, revision)) is None:
            return
        repo, oid = found
        self._send(200, [{"type": "file", "path": p, "size": len(d), "oid": git_blob_sha(d)}
                         for p, d in sorted(repo.commits[oid].items())])

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        if (found := self._snapshot(repo_id, revision)) is None:
            return
        repo, oid = found
        data = repo.commits[oid].get(path)
        if data is None:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        self._send(200, raw=data, headers={"X-Repo-Commit": oid, "ETag": f'"{git_blob_sha(data)}"'})
