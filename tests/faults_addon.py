"""A mitmproxy addon that makes storage misbehave as it does at scale, for the storage tests.

Run by tests/emulators.py's `fault_proxy` (mitmdump in reverse-proxy mode in front of one
local server). A share `fault_rate` of requests gets one of `fault_kinds`:

- `503`, `500`: an error answer; the server never sees the request.
- `throttle`: the store's own "slow down" answer (503 SlowDown for S3, 503 ServerBusy for
  Azure), with Retry-After: 0.
- `cut`: the server does the request, and the client gets the status, the headers and half
  the body, then the connection closes; a response without a body is dropped whole (the
  client never learns that its write happened).
- `drop`: the connection closes before the request is forwarded.

Each injected fault is logged as a JSON line to `fault_log`, so a test can show it really
met faults; `fault_path` (a regex) limits them to the requests whose path matches. Options
are strings or ints (mitmproxy has no float options).
"""

import json
import random
import re

from mitmproxy import ctx, http

KINDS = ("503", "500", "throttle", "cut", "drop")


class Faults:
    def load(self, loader):
        loader.add_option("fault_rate", str, "0", "share of requests to fail, 0..1")
        loader.add_option("fault_kinds", str, "503", "comma-separated: " + ",".join(KINDS))
        loader.add_option("fault_seed", int, -1, "random seed (-1: not seeded)")
        loader.add_option("fault_log", str, "", "JSON lines file of the injected faults")
        loader.add_option("fault_path", str, "", "regex: only requests whose path matches may fail")
        self.random = random.Random()

    def configure(self, updated):
        if "fault_seed" in updated and ctx.options.fault_seed >= 0:
            self.random.seed(ctx.options.fault_seed)
        kinds = [k.strip() for k in ctx.options.fault_kinds.split(",") if k.strip()]
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {KINDS}")
        self.kinds = kinds

    def _log(self, kind: str, flow: http.HTTPFlow) -> None:
        if ctx.options.fault_log:
            with open(ctx.options.fault_log, "a", encoding="utf-8") as f:
                f.write(
                    json.dumps({"kind": kind, "method": flow.request.method, "path": flow.request.path})
                    + "\n"
                )

    def request(self, flow: http.HTTPFlow):
        rate = float(ctx.options.fault_rate)
        if ctx.options.fault_path and not re.search(ctx.options.fault_path, flow.request.path):
            rate = 0
        kind = self.random.choice(self.kinds) if rate > 0 and self.random.random() < rate else None
        flow.metadata["fault"] = kind
        if kind is None:
            return
        self._log(kind, flow)
        azure = "x-ms-version" in flow.request.headers
        if kind in ("503", "500"):  # the store's own error body, as its client expects one
            code = "InternalError" if kind == "500" else "ServiceUnavailable"
            body = f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code><Message>injected fault</Message></Error>"
            headers = {"Content-Type": "application/xml"}
            if azure:
                headers["x-ms-error-code"] = code
            flow.response = http.Response.make(int(kind), body.encode(), headers)
        elif kind == "throttle":
            body = (
                b"<?xml version='1.0' encoding='utf-8'?><Error><Code>ServerBusy</Code>"
                b"<Message>The server is busy.</Message></Error>"
                if azure
                else b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                b"<Message>Please reduce your request rate.</Message></Error>"
            )
            headers = {"Content-Type": "application/xml", "Retry-After": "0"}
            if azure:
                headers["x-ms-error-code"] = "ServerBusy"
            flow.response = http.Response.make(503, body, headers)
        elif kind == "drop":
            flow.kill()

    def response(self, flow: http.HTTPFlow):
        if flow.metadata.get("fault") != "cut":
            return
        body = flow.response.raw_content or b""
        if len(body) < 2:
            flow.kill()  # nothing to cut: the answer is lost whole
            return
        # The full Content-Length (not chunked: a chunked answer cut short reads as one still
        # coming, and the client would wait for its read timeout), half the bytes, then close.
        flow.response.headers.pop("transfer-encoding", None)
        flow.response.headers["content-length"] = str(len(body))
        flow.response.headers["connection"] = "close"
        flow.response.raw_content = body[: len(body) // 2]


addons = [Faults()]
