#!/usr/bin/env python3
"""Compatibility check: drive a tagcast server with the official Volcengine Python SDK.

Environment:
  TAGCAST_ENDPOINT_HOST  host:port of the server, e.g. 127.0.0.1:45678 (plain http)
  TAGCAST_AK, TAGCAST_SK an access key pair that owns TAGCAST_APP_ID
  TAGCAST_APP_ID         the AppId to write to, e.g. 666675

Uses only the SDK's generic `volcengine.base.Service.Service` (there is no IM service
class in the Python SDK), exactly as the SDK's own service wrappers do: an ApiInfo per
Action and `Service.json(api, {}, body)`.

Exits 0 on success; on any failure prints what went wrong to stderr and exits 1.
Note: it leaves users 10001 and 10002 registered on purpose (the Rust test reads them back).
"""

import json
import os
import sys

try:
    from volcengine.ApiInfo import ApiInfo
    from volcengine.Credentials import Credentials
    from volcengine.ServiceInfo import ServiceInfo
    from volcengine.base.Service import Service
    import volcengine
except ImportError as e:  # pragma: no cover - environment problem
    print(f"python_compat: cannot import the volcengine SDK ({e}); run ./scripts/sdk-venv.sh", file=sys.stderr)
    sys.exit(2)

VERSION = "2020-12-01"
ACTIONS = ["RegisterUsers", "BatchUpdateUserTags", "BatchGetUser", "UnRegisterUsers", "BatchUpdateUser"]
REGION = "cn-north-1"
SERVICE = "rtc"

# Non-ASCII nicknames: one sent \u-escaped (json.dumps default, what most SDK wrappers do),
# one sent as raw UTF-8 bytes (json.dumps(..., ensure_ascii=False).encode(), as MaasService does).
NICK_1 = "Zhang Wei 张伟 ✓"
NICK_2 = "Renée 🚀 李娜"


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def env(name):
    v = os.environ.get(name)
    if not v:
        raise Failure(f"environment variable {name} is not set")
    return v


def make_service(host, ak, sk):
    api_info = {
        action: ApiInfo("POST", "/", {"Action": action, "Version": VERSION}, {}, {})
        for action in ACTIONS
    }
    service_info = ServiceInfo(host, {"Accept": "application/json"},
                               Credentials(ak, sk, SERVICE, REGION), 10, 30, scheme="http")
    service = Service(service_info, api_info)
    # Service.__init__ silently replaces the credentials with VOLC_ACCESSKEY/VOLC_SECRETKEY
    # or ~/.volc/{credentials,config} when present; put ours back.
    service.set_ak(ak)
    service.set_sk(sk)
    return service


def call(service, action, body, raw_utf8=False):
    """Returns the parsed envelope of a successful (HTTP 200) call, checking it."""
    if raw_utf8:
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    else:
        payload = json.dumps(body)
    try:
        text = service.json(action, {}, payload)
    except Exception as e:  # the SDK raises a bare Exception holding the body
        raise Failure(f"{action} failed: {error_body(e)!r}")
    envelope = json.loads(text)
    meta = envelope.get("ResponseMetadata", {})
    check("Error" not in meta, f"{action}: Error in a 200 answer: {envelope}")
    check(meta.get("Action") == action, f"{action}: ResponseMetadata.Action is {meta.get('Action')!r}")
    check(meta.get("Version") == VERSION, f"{action}: ResponseMetadata.Version is {meta.get('Version')!r}")
    check(meta.get("Service") == SERVICE, f"{action}: ResponseMetadata.Service is {meta.get('Service')!r}")
    check(meta.get("Region") == REGION, f"{action}: ResponseMetadata.Region is {meta.get('Region')!r}")
    check(bool(meta.get("RequestId")), f"{action}: no RequestId in {envelope}")
    check("Result" in envelope, f"{action}: no Result in {envelope}")
    return envelope["Result"]


def error_body(exc):
    """The response body carried by the SDK's exception (bytes or str in args[0])."""
    raw = exc.args[0] if exc.args else ""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return raw


def expect_no_failures(action, result):
    check(result.get("FailedInfos") == [], f"{action}: FailedInfos is {result.get('FailedInfos')!r}, expected []")


def main():
    host = env("TAGCAST_ENDPOINT_HOST")
    ak = env("TAGCAST_AK")
    sk = env("TAGCAST_SK")
    app = int(env("TAGCAST_APP_ID"))
    svc = make_service(host, ak, sk)
    steps = []

    # 0. Start from a clean slate (a rerun against a persistent server); UserNotFound is fine.
    r = call(svc, "UnRegisterUsers", {"AppId": app, "UserIds": [10001, 10002, 10004, 10005]})
    bad = [f for f in r.get("FailedInfos", []) if f.get("Code") != "UserNotFound"]
    check(bad == [], f"UnRegisterUsers (cleanup): unexpected FailedInfos {bad!r}")
    steps.append("UnRegisterUsers cleanup")

    # 1. RegisterUsers: one \u-escaped body, one raw UTF-8 body.
    r = call(svc, "RegisterUsers", {"AppId": app, "Users": [
        {"UserId": 10001, "NickName": NICK_1, "Tags": ["level:gold"]}]})
    expect_no_failures("RegisterUsers 10001", r)
    r = call(svc, "RegisterUsers", {"AppId": app, "Users": [
        {"UserId": 10002, "NickName": NICK_2, "Tags": ["level:gold"]}]}, raw_utf8=True)
    expect_no_failures("RegisterUsers 10002", r)
    steps.append("RegisterUsers 10001 (escaped JSON), 10002 (raw UTF-8 JSON)")

    # 2. The seed body, exactly.
    seed = {"AppId": app, "InboxType": 0, "UserTags": [{"UserId": 10001, "Tags": {"key": "value"}}], "Op": 0}
    expect_no_failures("BatchUpdateUserTags (seed)", call(svc, "BatchUpdateUserTags", seed))
    steps.append("BatchUpdateUserTags seed shape Op 0")

    # 3. The SDK shape.
    sdk_shape = {"AppId": app, "UserIds": [10001, 10002], "Tags": ["city:shanghai"], "Op": 0}
    expect_no_failures("BatchUpdateUserTags (SDK shape)", call(svc, "BatchUpdateUserTags", sdk_shape))
    steps.append("BatchUpdateUserTags SDK shape Op 0")

    # 4. Op 1: delete "level" from 10002 (seed shape; the value is ignored).
    delete = {"AppId": app, "InboxType": 0, "UserTags": [{"UserId": 10002, "Tags": {"level": ""}}], "Op": 1}
    expect_no_failures("BatchUpdateUserTags (Op 1)", call(svc, "BatchUpdateUserTags", delete))
    steps.append("BatchUpdateUserTags seed shape Op 1")

    # 5. Read back.
    r = call(svc, "BatchGetUser", {"AppId": app, "UserIds": [10001, 10002]})
    users = {u.get("UserId"): u for u in r.get("Users", [])}
    check(sorted(users) == [10001, 10002], f"BatchGetUser: Users are {sorted(users)!r}, result {r!r}")
    check(r.get("NotFoundUsers") == [], f"BatchGetUser: NotFoundUsers is {r.get('NotFoundUsers')!r}")
    want = {10001: ["city:shanghai", "key:value", "level:gold"], 10002: ["city:shanghai"]}
    nicks = {10001: NICK_1, 10002: NICK_2}
    for uid in (10001, 10002):
        u = users[uid]
        check(u.get("Tags") == want[uid], f"BatchGetUser: user {uid} Tags {u.get('Tags')!r}, expected {want[uid]!r}")
        check(u.get("NickName") == nicks[uid], f"BatchGetUser: user {uid} NickName {u.get('NickName')!r}, expected {nicks[uid]!r}")
        check(u.get("AppId") == app, f"BatchGetUser: user {uid} AppId {u.get('AppId')!r}")
    steps.append("BatchGetUser tags and NickName round-trip")

    # 6. BatchUpdateUser on a throwaway user: the given NickName replaced, a null Ext (what
    #    the Go SDK sends for a nil map) left alone, Tags replacing inbox 0; an unknown user
    #    is a FailedInfo.
    expect_no_failures("RegisterUsers 10004", call(svc, "RegisterUsers", {"AppId": app, "Users": [
        {"UserId": 10004, "NickName": "old", "Ext": {"a": "1"}, "Tags": ["level:gold", "city:beijing"]}]}))
    r = call(svc, "BatchUpdateUser", {"AppId": app, "Users": [
        {"UserId": 10004, "NickName": NICK_2, "Ext": None, "Tags": ["level:silver"]},
        {"UserId": 10005, "NickName": "nobody"}]}, raw_utf8=True)
    failed = [(f.get("UserId"), f.get("Code")) for f in r.get("FailedInfos", [])]
    check(failed == [(10005, "UserNotFound")], f"BatchUpdateUser: FailedInfos {r.get('FailedInfos')!r}")
    r = call(svc, "BatchGetUser", {"AppId": app, "UserIds": [10004]})
    u = (r.get("Users") or [{}])[0]
    got = (u.get("NickName"), u.get("Ext"), u.get("Tags"))
    check(got == (NICK_2, {"a": "1"}, ["level:silver"]), f"BatchGetUser after BatchUpdateUser: {r!r}")
    expect_no_failures("UnRegisterUsers 10004", call(svc, "UnRegisterUsers", {"AppId": app, "UserIds": [10004]}))
    steps.append("BatchUpdateUser replaces given fields and inbox-0 tags, keeps null ones")

    # 7. UnRegisterUsers on a throwaway user, then it is gone.
    expect_no_failures("RegisterUsers 10003", call(svc, "RegisterUsers", {"AppId": app, "Users": [{"UserId": 10003}]}))
    expect_no_failures("UnRegisterUsers 10003", call(svc, "UnRegisterUsers", {"AppId": app, "UserIds": [10003]}))
    r = call(svc, "BatchGetUser", {"AppId": app, "UserIds": [10003]})
    check(r.get("Users") == [] and r.get("NotFoundUsers") == [10003], f"BatchGetUser after UnRegisterUsers: {r!r}")
    steps.append("UnRegisterUsers removes a user")

    # 8. A wrong secret key is rejected with the vendor error envelope.
    wrong = make_service(host, ak, sk + "-wrong")
    try:
        wrong.json("BatchUpdateUserTags", {}, json.dumps(seed))
    except Exception as e:
        text = error_body(e)
        try:
            envelope = json.loads(text)
        except ValueError:
            raise Failure(f"wrong secret: error body is not JSON: {text!r}")
        err = envelope.get("ResponseMetadata", {}).get("Error", {})
        check(err.get("Code") == "SignatureDoesNotMatch", f"wrong secret: Error is {err!r}, expected SignatureDoesNotMatch")
        check(err.get("CodeN") == 100010, f"wrong secret: CodeN is {err.get('CodeN')!r}, expected 100010")
        check("Result" not in envelope, f"wrong secret: Result present in {envelope!r}")
    else:
        raise Failure("wrong secret: the request was accepted")
    steps.append("wrong secret key -> SignatureDoesNotMatch")

    print(f"python_compat: OK with volcengine {getattr(volcengine, 'VERSION', '?')} against http://{host}")
    for s in steps:
        print(f"  ok  {s}")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"python_compat: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # connection refused, bad JSON, ...
        print(f"python_compat: FAILED with {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
