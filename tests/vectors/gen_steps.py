"""Records the official Python SDK signer's intermediate steps for the Python vectors.

Run with the official SDK installed (pip install volcengine==1.0.229):
    python3 tests/vectors/gen_steps.py > tests/vectors/python_sdk_steps.json
It re-signs each 'accept' request with volcengine.auth.SignerV4 at the vector's
server_time, checks that the Authorization it produces equals the vector's, and records the
canonical request and string to sign that the SDK itself hashed and signed.
"""
import json
import sys
from urllib.parse import parse_qsl

from volcengine.auth.SignerV4 import SignerV4
from volcengine.base.Request import Request
from volcengine.Credentials import Credentials
from volcengine.util.Util import Util

cases = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "tests/vectors/signature_v4_python_sdk.json"))["cases"]
out = []
for case in cases:
    acc = case["accept"]
    seen = {"sha": [], "hmac": []}
    orig_sha, orig_hmac = Util.sha256, Util.hmac_sha256
    Util.sha256 = staticmethod(lambda c: (seen["sha"].append(c), orig_sha(c))[1])
    Util.hmac_sha256 = staticmethod(lambda k, c: (seen["hmac"].append(c), orig_hmac(k, c))[1])
    SignerV4.get_current_format_date = staticmethod(lambda: case["server_time"])
    try:
        req = Request()
        req.method = acc["method"]
        req.path = acc["path"]
        req.query = dict(parse_qsl(acc["query"], keep_blank_values=True))
        req.headers = {k: v for k, v in acc["headers"].items() if k not in ("Authorization", "X-Date", "X-Content-Sha256")}
        req.body = acc["body"].encode("utf-8")
        creds = Credentials(case["access_key"], case["secret_key"], case["service"], case["region"])
        SignerV4.sign(req, creds)
    finally:
        Util.sha256, Util.hmac_sha256 = orig_sha, orig_hmac
    assert req.headers["Authorization"] == acc["headers"]["Authorization"], case["name"]
    canonical = [s for s in seen["sha"] if isinstance(s, str) and s.startswith(acc["method"] + "\n")][-1]
    sts = seen["hmac"][-1]
    out.append({"name": case["name"], "canonical_request": canonical, "string_to_sign": sts,
                "signature": req.headers["Authorization"].rsplit("Signature=", 1)[1]})
json.dump({"about": "Intermediate steps recorded from the official Python SDK signer by gen_steps.py", "cases": out},
          sys.stdout, indent=1, ensure_ascii=False)
print()
