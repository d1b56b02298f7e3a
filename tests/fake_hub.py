"""A stand-in for the Hugging Face Hub on 127.0.0.1: the few endpoints ``huggingface_hub``'s
``create_repo`` and ``upload_folder`` use without hf_xet (repo creation, preupload, one NDJSON commit
with the files inline as base64), for tests that push a dataset. Point a client at it with
``HfApi(endpoint=fake.base)`` or ``HF_ENDPOINT``. The README's YAML header is checked as the Hub does
(``/api/validate-yaml``), with PyYAML. It keeps the repos created, the files committed and
every Authorization header seen; a request it does not know is answered 404 and noted in ``unknown``.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, token: str | None = None) -> None:
        """``token``: answer 401 to a request that does not carry ``Bearer TOKEN``."""
        self.token = token
        self.repos: dict[str, dict] = {}          # "datasets/OWNER/NAME" -> {"private": ..}
        self.files: dict[str, dict[str, bytes]] = {}   # repo -> path -> content
        self.commits: list[dict] = []
        self.auth: list[str] = []
        self.unknown: list[str] = []
        self.bodies: list[bytes] = []
        self.validated: list[str] = []   # README.md contents whose YAML header was checked
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                header = self.headers.get("Authorization", "")
                outer.auth.append(header)
                if outer.token is not None and header != f"Bearer {outer.token}":
                    self.reply(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_GET(self) -> None:
                outer.unknown.append(f"GET {self.path}")
                self.reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                outer.bodies.append(body)
                if not self._authorised():
                    return
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/api/validate-yaml":   # the card's YAML header: parsed, so a broken one fails here
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        yaml.safe_load(content.split("---")[1])
                        outer.validated.append(content)
                        self.reply(200, {"errors": [], "warnings": []})
                    except Exception as exc:
                        self.reply(400, {"errors": [{"message": str(exc)}]})
                elif path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request.get('type', 'model')}s/{request['organization']}/{request['name']}"
                    outer.repos.setdefault(repo, {"private": request.get("private")})
                    outer.files.setdefault(repo, {})
                    self.reply(200, {"url": f"{outer.base}/{repo}", "name": f"{request['organization']}/{request['name']}"})
                elif len(parts) >= 6 and parts[0] == "api" and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
                elif len(parts) >= 6 and parts[0] == "api" and parts[4] == "commit":
                    repo = "/".join(parts[1:4])
                    if repo not in outer.repos:
                        self.reply(404, {"error": f"Repository {repo} not found"})
                        return
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    for line in lines:
                        if line["key"] == "file":
                            value = line["value"]
                            content = value["content"]
                            outer.files[repo][value["path"]] = (base64.b64decode(content)
                                                                if value.get("encoding") == "base64" else content.encode())
                    outer.commits.append({"repo": repo, "lines": lines})
                    oid = f"{len(outer.commits):040x}"
                    self.reply(200, {"commitUrl": f"{outer.base}/{repo}/commit/{oid}", "commitOid": oid,
                                     "success": True})
                else:
                    outer.unknown.append(f"POST {self.path}")
                    self.reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
