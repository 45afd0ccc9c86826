"""A small in-memory Hugging Face Hub for tests: the real ``huggingface_hub`` client talks HTTP to it.

It speaks the part of the Hub API that ``leaderboard.hub`` (dataset repos) and ``targets.zoo`` (model repos) use,
as the installed huggingface_hub calls it. ``<api>`` is ``datasets`` or ``models``; downloads of a dataset file sit
under ``/datasets/<repo>/resolve/...``, of a model file under ``/<repo>/resolve/...`` (no prefix), as on the Hub:

    GET  /api/<api>/<repo>[/revision/<rev>]           repo info (``sha`` = head commit; honours ``expand``)
    GET  /api/<api>/<repo>/refs                       branches
    GET  /api/<api>/<repo>/tree/<rev>[/<path>]        file listing (``recursive``)
    POST /api/<api>/<repo>/paths-info/<rev>           info on given paths (form-encoded ``paths``)
    POST /api/<api>/<repo>/preupload/<rev>            upload mode: always "regular" (base64 inside the commit)
    POST /api/<api>/<repo>/commit/<rev>               NDJSON commit; a ``parentCommit`` other than the head -> 412
    POST /api/repos/create                            ``HfApi.create_repo`` (409 when it exists: ``exist_ok`` works)
    POST /api/validate-yaml                           README metadata check before ``upload_folder``: accepts all
    HEAD/GET [/datasets]/<repo>/resolve/<rev>/<path>  file download, with X-Repo-Commit, ETag, Content-Length

Repos: ``FakeHub(repos=(...))`` creates dataset repos (the leaderboard), ``FakeHub(model_repos=(...))`` model repos;
later, ``hub.create_repo("org/name", repo_type="model")`` or the client's own ``HfApi(endpoint=hub.endpoint)
.create_repo("org/name")``. Every repo starts with one commit holding ``.gitattributes``; the client's
``upload_folder`` / ``create_commit`` / ``upload_file`` then work on either type. The test hooks take
``repo_type=None``, which finds the repo by id alone (an error if a model and a dataset repo share the id).

Errors carry the headers the client maps to its exceptions (``X-Error-Code: RepoNotFound`` / ``RevisionNotFound``
/ ``EntryNotFound``; ``X-Error-Message`` on 401/403). Any other route answers 404 and is logged and kept in
``unknown_routes``, so a client upgrade that calls something new fails loudly. Repo state is a list of commits,
each a full ``{path: bytes}`` snapshot; a commit's sha is the sha1 of its parent, message and file ids. Test hooks:
``commit`` (a commit made directly on the server, e.g. a foreign publisher or tampering),
``commit_before_next_request`` (the head moves between a client's read and its commit) and ``hold_commits`` (the
next N commit requests wait for each other, so they all carry the same parent).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"
REPO_TYPES = ("model", "dataset")
_API = {"model": "models", "dataset": "datasets"}  # /api/<this>/<repo>
_URL = {"model": "", "dataset": "datasets/"}  # <endpoint>/<this><repo>/resolve/...
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
DATE = "2025-01-01T00:00:00.000Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "dataset"
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    """An error answer: status, JSON body and Hub error headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}  # more fields beside "error" (create_repo's 409 carries the repo url)


class FakeHub:
    """Repo state plus the HTTP server; ``endpoint`` is what the client is pointed at."""

    def __init__(
        self,
        repos: tuple[str, ...] = ("transferbench/leaderboard",),
        tokens: dict[str, str] | None = None,
        model_repos: tuple[str, ...] = (),
    ):
        """``repos`` are dataset repos, ``model_repos`` model repos; ``tokens`` maps token -> "read" or "write"
        (None accepts every request: public, open repos)."""
        self.repos: dict[tuple[str, str], Repo] = {}  # (repo_type, repo_id) -> repo
        self.tokens = tokens
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.unknown_routes: list[str] = []
        self.authorizations: list[str | None] = []
        self._before_next_commit: list[tuple[str, dict[str, bytes | None], str, str]] = []
        self._hold: threading.Barrier | None = None
        self._held = 0
        for repo_id in repos:
            self.create_repo(repo_id, "dataset")
        for repo_id in model_repos:
            self.create_repo(repo_id, "model")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        serve = {"poll_interval": 0.05}  # a quick shutdown at teardown
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=serve, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- state and test hooks ----------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, repo_type: str = "dataset") -> None:
        """A new repo of ``repo_type`` ("dataset" or "model") with one initial commit; an existing one is an error."""
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}")
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists on the test Hub")
            self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type)
            self.commit(repo_id, {".gitattributes": GITATTRIBUTES}, "initial commit", repo_type=repo_type)

    def repo(self, repo_id: str, repo_type: str | None = None) -> Repo:
        """The repo with this id (of ``repo_type``; None = the only repo with this id, of either type)."""
        with self.lock:
            if repo_type is not None:
                return self.repos[(repo_type, repo_id)]
            found = [r for (_, rid), r in self.repos.items() if rid == repo_id]
            if len(found) != 1:
                raise KeyError(f"{len(found)} repos named {repo_id} on the test Hub; pass repo_type")
            return found[0]

    def commit(
        self,
        repo_id: str,
        changes: dict[str, bytes | None],
        message: str,
        branch: str = "main",
        repo_type: str | None = None,
    ) -> str:
        """Commit directly on the server (``None`` deletes a path); returns the new head."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            parent = repo.branches.get(branch)
            files = dict(repo.commits[parent].files) if parent else {}
            for path, data in changes.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = data
            ids = {p: git_blob_oid(d) for p, d in sorted(files.items())}
            sha = hashlib.sha1(json.dumps([parent, message, ids]).encode(), usedforsecurity=False).hexdigest()
            repo.commits[sha] = Commit(sha, parent, message, files)
            repo.branches[branch] = sha
            return sha

    def commit_before_next_request(
        self, repo_id: str, changes: dict[str, bytes | None], message: str, repo_type: str | None = None
    ) -> None:
        """Make a foreign commit the moment the next commit request arrives (before its parent is checked).

        Calls queue up: each commit request applies the oldest queued foreign commit, if any.
        """
        with self.lock:
            repo_type = self.repo(repo_id, repo_type).repo_type
            self._before_next_commit.append((repo_id, changes, message, repo_type))

    def hold_commits(self, n: int, timeout: float = 10.0) -> None:
        """The next ``n`` commit requests wait until all ``n`` have arrived, then are processed one by one."""
        with self.lock:
            self._hold, self._held = threading.Barrier(n, timeout=timeout), n

    def head(self, repo_id: str, branch: str = "main", repo_type: str | None = None) -> str:
        with self.lock:
            return self.repo(repo_id, repo_type).branches[branch]

    def files(self, repo_id: str, revision: str = "main", repo_type: str | None = None) -> dict[str, bytes]:
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            return dict(repo.commits[repo.branches.get(revision, revision)].files)

    def history(self, repo_id: str, branch: str = "main", repo_type: str | None = None) -> list[Commit]:
        """Commits from the head back to the first."""
        with self.lock:
            repo, out = self.repo(repo_id, repo_type), []
            sha: str | None = repo.branches[branch]
            while sha is not None:
                out.append(repo.commits[sha])
                sha = repo.commits[sha].parent
            return out

    def count(self, method: str, pattern: str) -> int:
        """How many requests of ``method`` had a path matching ``pattern`` (a regex)."""
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and re.search(pattern, p))

    # --- request handling (called by the handler, one thread per request) ----------------------------------------
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        if (repo_type, repo_id) not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.repos[(repo_type, repo_id)]

    def url(self, repo_type: str, repo_id: str) -> str:
        """The repo's web address (``<endpoint>/datasets/<id>`` or ``<endpoint>/<id>``)."""
        return f"{self.endpoint}/{_URL[repo_type]}{repo_id}"

    def _resolve(self, repo: Repo, rev: str) -> Commit:
        sha = repo.branches.get(rev, rev)
        if sha not in repo.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[sha]

    def _auth(self, authorization: str | None, write: bool) -> None:
        self.authorizations.append(authorization)
        if self.tokens is None:
            return
        token = authorization.removeprefix("Bearer ").strip() if authorization else None
        if token is None:
            raise HubError(401, "Repository not found", "RepoNotFound")  # what the Hub says to anonymous callers
        if token not in self.tokens:
            raise HubError(
                401,
                "Invalid credentials in Authorization header",
                headers={"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        if write and self.tokens[token] != "write":
            message = "You don't have the rights to create a commit on this repo"
            raise HubError(403, message, headers={"X-Error-Message": message})

    @staticmethod
    def _entries(commit: Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        files = {p: d for p, d in commit.files.items() if p.startswith(base)}
        if prefix and not files:
            raise HubError(404, f"{prefix} does not exist on {commit.sha}", "EntryNotFound")
        out: dict[str, dict[str, Any]] = {}
        for path, data in sorted(files.items()):
            parts = path[len(base) :].split("/")
            for i in range(1, len(parts)):  # the folders on the way
                folder = base + "/".join(parts[:i])
                if recursive or i == 1:
                    oid = hashlib.sha1(folder.encode(), usedforsecurity=False).hexdigest()
                    out.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                out[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        return list(out.values())

    def info(self, repo_type: str, repo_id: str, rev: str, query: dict[str, list[str]]) -> dict[str, Any]:
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve(repo, rev)
        full = {
            "_id": hashlib.md5(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "private": self.tokens is not None,
            "gated": False,
            "disabled": False,
            "lastModified": DATE,
            "createdAt": DATE,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        expand = query.get("expand") or query.get("expand[]")
        return {k: v for k, v in full.items() if k in ("_id", "id", *expand)} if expand else full

    def refs(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        repo = self._repo(repo_type, repo_id)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def tree(
        self, repo_type: str, repo_id: str, rev: str, path: str, query: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        commit = self._resolve(self._repo(repo_type, repo_id), rev)
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        return self._entries(commit, path, recursive)

    def paths_info(self, repo_type: str, repo_id: str, rev: str, form: dict[str, list[str]]) -> list[dict[str, Any]]:
        commit = self._resolve(self._repo(repo_type, repo_id), rev)
        out = []
        for path in form.get("paths", []):
            if path in commit.files:
                data = commit.files[path]
                out.append({"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path})
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                oid = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()
                out.append({"type": "directory", "oid": oid, "size": 0, "path": path})
        return out

    def preupload(self, repo_type: str, repo_id: str, rev: str, payload: dict[str, Any]) -> dict[str, Any]:
        commit = self._resolve(self._repo(repo_type, repo_id), rev)
        files = []
        for f in payload.get("files", []):
            existing = commit.files.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": None if existing is None else git_blob_oid(existing),
                }
            )
        return {"files": files, "commitOid": commit.sha}

    def create_commit(self, repo_type: str, repo_id: str, branch: str, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        changes: dict[str, bytes | None] = {}
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file" and value.get("encoding") == "base64":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                changes[value["path"]] = None
            else:
                raise HubError(400, f"unsupported commit operation {key!r} (this test Hub stores regular files only)")
        if self._hold is not None:
            barrier = self._hold
            with self.lock:
                self._held -= 1
                if self._held <= 0:
                    self._hold = None
            barrier.wait()
        with self.lock:
            repo = self._repo(repo_type, repo_id)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if self._before_next_commit:  # one queued foreign commit per commit request
                foreign = self._before_next_commit.pop(0)
                log.info("test hook: foreign commit on %s before this request", foreign[0])
                self.commit(*foreign[:3], repo_type=foreign[3])
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.branches[branch]:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            sha = self.commit(repo_id, changes, header.get("summary", ""), branch, repo_type)
        return {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.url(repo_type, repo_id)}/commit/{sha}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }

    def create_repo_api(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/repos/create``: ``type`` absent means a model repo, as on the Hub."""
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"this test Hub has no {repo_type!r} repos (only {', '.join(REPO_TYPES)})")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            raise HubError(400, f"name the owner: {repo_id!r} has no namespace (this test Hub has no user account)")
        if (repo_type, repo_id) in self.repos:
            url = self.url(repo_type, repo_id)
            raise HubError(409, "You already created this repo", headers={"X-Error-Message": "Repo already exists"},
                           body={"url": url})  # fmt: skip
        self.create_repo(repo_id, repo_type)
        return {"url": self.url(repo_type, repo_id), "name": repo_id}

    def resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> tuple[bytes, dict[str, str]]:
        commit = self._resolve(self._repo(repo_type, repo_id), rev)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        return data, {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{git_blob_oid(data)}"',
            "Content-Type": "application/octet-stream",
        }


class _Handler(BaseHTTPRequestHandler):
    """Routes each request to ``FakeHub``; HTTP/1.0, one request per connection."""

    ROUTES: tuple[tuple[str, str, str, str], ...] = (
        *(
            (verb, pattern.format(api=_API[kind], url=_URL[kind], repo=_REPO, rev=_REV), name, kind)
            for kind in ("dataset", "model")  # datasets first: their download route is the more specific one
            for verb, pattern, name in (
                ("GET", "/api/{api}/{repo}", "info"),
                ("GET", "/api/{api}/{repo}/revision/{rev}", "info"),
                ("GET", "/api/{api}/{repo}/refs", "refs"),
                ("GET", "/api/{api}/{repo}/tree/{rev}(?:/(?P<path>.*))?", "tree"),
                ("POST", "/api/{api}/{repo}/paths-info/{rev}", "paths_info"),
                ("POST", "/api/{api}/{repo}/preupload/{rev}", "preupload"),
                ("POST", "/api/{api}/{repo}/commit/{rev}", "commit"),
                ("HEAD", "/{url}{repo}/resolve/{rev}/(?P<path>.+)", "resolve"),
                ("GET", "/{url}{repo}/resolve/{rev}/(?P<path>.+)", "resolve"),
            )
        ),
        ("POST", "/api/repos/create", "create_repo", ""),
        ("POST", "/api/validate-yaml", "validate_yaml", ""),
    )

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake hub: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = self._body() if method == "POST" else b""
        try:
            for verb, pattern, name, kind in self.ROUTES:
                m = re.fullmatch(pattern, url.path)
                if verb == method and m:
                    args = {k: unquote(v or "") for k, v in m.groupdict().items()}
                    answer = self._route(name, kind, args, query, body)
                    break
            else:
                self.hub.unknown_routes.append(f"{method} {self.path}")
                log.warning("fake hub: unknown route %s %s (answered 404)", method, self.path)
                raise HubError(404, f"unknown route {method} {url.path}")
        except HubError as e:
            headers = {**e.headers, **({"X-Error-Code": e.code} if e.code else {})}
            answer = _Answer(e.status, json.dumps({"error": e.message, **e.body}).encode(), headers)
        except Exception as e:  # a bug in this test server: answer 500 rather than drop the connection
            log.exception("fake hub: %s %s failed", method, self.path)
            answer = _Answer(500, json.dumps({"error": f"test hub bug: {e!r}"}).encode())
        with self.hub.lock:  # logged before the client can see the answer, so tests may count right after a call
            self.hub.requests.append((method, self.path, answer.status))
        self.send_response(answer.status)
        for k, v in answer.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer.data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(answer.data)

    def _route(self, name: str, kind: str, args: dict[str, str], query: dict[str, list[str]], body: bytes) -> _Answer:
        hub = self.hub
        hub._auth(self.headers.get("Authorization"), write=name in ("preupload", "commit", "create_repo"))
        if name == "create_repo":
            with hub.lock:
                return _Answer.json(hub.create_repo_api(json.loads(body)))
        if name == "validate_yaml":  # upload_folder asks before uploading a README.md; no metadata rules here
            return _Answer.json({"errors": [], "warnings": []})
        repo, rev = args["repo"], args.get("rev", "main")
        if name == "commit":  # not under the lock: it may wait for other commit requests (hold_commits)
            return _Answer.json(hub.create_commit(kind, repo, rev, body))
        with hub.lock:
            if name == "resolve":
                data, headers = hub.resolve(kind, repo, rev, args["path"])
                return _Answer(200, data, headers)
            if name == "info":
                return _Answer.json(hub.info(kind, repo, rev, query))
            if name == "refs":
                return _Answer.json(hub.refs(kind, repo))
            if name == "tree":
                return _Answer.json(hub.tree(kind, repo, rev, args.get("path", ""), query))
            if name == "paths_info":
                return _Answer.json(hub.paths_info(kind, repo, rev, parse_qs(body.decode())))
            return _Answer.json(hub.preupload(kind, repo, rev, json.loads(body)))


@dataclass
class _Answer:
    status: int
    data: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    @classmethod
    def json(cls, obj: Any) -> _Answer:
        return cls(200, json.dumps(obj).encode())


@contextmanager
def running_hub(**kwargs: Any) -> Iterator[FakeHub]:
    """A started ``FakeHub`` for the duration of the ``with`` block."""
    hub = FakeHub(**kwargs).start()
    try:
        yield hub
    finally:
        hub.stop()
