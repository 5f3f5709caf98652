"""The booking verifier examples (examples/verifiers) against a real
service: a token admitted for the queue is valid; one for another queue,
one tampered with, and one signed by a key the service never published are
refused."""
from __future__ import annotations

import base64
import importlib.util
import json
import pathlib
import shutil
import subprocess

import pytest

from test_waiting_page import ROOT, ctl, new_queue, scratch, waitroom  # noqa: F401 (fixtures)

VERIFIERS = ROOT / "examples" / "verifiers"


def tokens(waitroom) -> dict:
    queue, other = new_queue(waitroom), new_queue(waitroom)
    admitted = json.loads(ctl(waitroom, "--output", "json", "admit-users", queue, "tester"))
    elsewhere = json.loads(ctl(waitroom, "--output", "json", "admit-users", other, "tester"))
    good = admitted[0]["token"]
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    head = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    head["kid"] = "never-published"
    unknown_kid = base64.urlsafe_b64encode(json.dumps(head).encode()).rstrip(b"=").decode()
    return {
        "queue": queue,
        "valid": good,
        "other queue": elsewhere[0]["token"],
        "tampered": f"{header}.{forged}.{signature}",
        "unknown key": f"{unknown_kid}.{payload}.{signature}",
    }


def test_the_python_verifier_accepts_the_queues_token_and_refuses_the_rest(waitroom):
    spec = importlib.util.spec_from_file_location("verify", VERIFIERS / "verify.py")
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    import jwt

    given = tokens(waitroom)
    verifier = verify.Verifier(waitroom["jwks"])
    claims = verifier.verify(given["valid"], given["queue"])
    assert claims["sub"] == "tester" and claims["aud"] == given["queue"]
    for kind in ("other queue", "tampered", "unknown key"):
        with pytest.raises((jwt.InvalidTokenError, jwt.PyJWKClientError)):
            verifier.verify(given[kind], given["queue"])
    # A token of another issuer (another waitroom, or a test's) is refused.
    with pytest.raises(jwt.InvalidIssuerError):
        verify.Verifier(waitroom["jwks"], issuer="another-issuer").verify(given["valid"], given["queue"])


def test_the_node_verifier_accepts_the_queues_token_and_refuses_the_rest(waitroom, scratch):  # noqa: F811
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js is not installed here: the Node verifier example is not run")
    work = scratch / "node-verifier"
    work.mkdir()
    for name in ("verify.mjs", "package.json"):
        shutil.copy(VERIFIERS / name, work / name)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work,
                   check=True, timeout=300)
    given = tokens(waitroom)
    order = ["valid", "other queue", "tampered", "unknown key"]
    done = subprocess.run(["node", "verify.mjs", waitroom["jwks"], given["queue"], *(given[k] for k in order)],
                          cwd=work, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done
    assert lines[0].startswith("VALID tester "), lines
    assert all(line.startswith("REFUSED") for line in lines[1:]), lines
    assert done.returncode == 1


def test_the_python_verifier_fetches_the_keys_again_for_a_token_of_a_new_key(scratch):  # noqa: F811
    import subprocess as sp

    from test_waiting_page import Stack

    spec = importlib.util.spec_from_file_location("verify", VERIFIERS / "verify.py")
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    stack = Stack(scratch, "--queue", "rotating")
    try:
        services = stack.services()
        verifier = verify.Verifier(services["jwks"])
        first = json.loads(ctl(services, "--output", "json", "admit-users", "rotating", "before"))[0]["token"]
        assert verifier.verify(first, "rotating")["sub"] == "before"
        # The operator's rotation: a new signing key, the old one kept to
        # verify with. The verifier holds the old key set in its cache.
        old = stack.key
        stack.key = stack.scratch / "signing-2.pem"
        sp.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(stack.key)], check=True)
        stack.flags = (*stack.flags, "--verify-key", str(old))
        stack.waitroom.stop()
        stack.start_waitroom()
        second = json.loads(ctl(services, "--output", "json", "admit-users", "rotating", "after"))[0]["token"]
        kid = lambda token: json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
        assert kid(second) != kid(first)
        assert verifier.verify(second, "rotating")["sub"] == "after"
        assert verifier.verify(first, "rotating")["sub"] == "before"
    finally:
        stack.stop()


def test_the_readmes_python_reads_the_error_reason_from_a_real_refusal(waitroom):  # noqa: F811
    """The README's snippet, run as written, against a call the service
    refuses: an Enqueue to a queue that does not exist."""
    import contextlib
    import io
    import re
    import textwrap

    import grpc

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"\n( *)```python\n(.*?)\n\1```", readme[readme.index("ErrorInfo"):], re.S)
    snippet = textwrap.dedent(block.group(2))
    assert "stub.Enqueue(request)" in snippet, snippet

    def field(number: int, text: str) -> bytes:
        data = text.encode()
        return bytes([number << 3 | 2, len(data)]) + data

    class Stub:
        """The generated stub's one call the snippet makes, without the
        generated code: the request as protobuf bytes."""

        def __init__(self, channel):
            self.call = channel.unary_unary("/waitroom.v1.QueueService/Enqueue")

        def Enqueue(self, request):  # noqa: N802 (the generated name)
            return self.call(request, timeout=10)

    target = waitroom["addr"].removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(snippet, {"stub": Stub(channel), "request": field(1, "no-such-queue") + field(2, "someone")})
    assert printed.getvalue().split() == ["QUEUE_NOT_FOUND"], printed.getvalue()
