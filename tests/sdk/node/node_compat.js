// Compatibility check: drive a tagcast server with the official Volcengine Node SDK
// (@volcengine/openapi), unchanged except for host and protocol.
// Environment: TAGCAST_ENDPOINT_HOST (host:port), TAGCAST_AK, TAGCAST_SK, TAGCAST_APP_ID.
// Exits 0 and prints "node_compat: OK" on success; prints the failure and exits 1 otherwise.
"use strict";
const assert = require("node:assert/strict");
const { Service } = require("@volcengine/openapi");

const appId = Number(process.env.TAGCAST_APP_ID);
function service(secretKey) {
  const s = new Service({
    host: process.env.TAGCAST_ENDPOINT_HOST,
    protocol: "http:",
    serviceName: "rtc",
    region: "cn-north-1",
    defaultVersion: "2020-12-01",
    accessKeyId: process.env.TAGCAST_AK,
    secretKey,
  });
  // Like the Python SDK, the Node SDK may take keys from VOLC_* variables; set them again.
  s.setAccessKeyId(process.env.TAGCAST_AK);
  s.setSecretKey(secretKey);
  return s;
}

async function main() {
  const rtc = service(process.env.TAGCAST_SK);
  const api = (action) => rtc.createJSONAPI(action);
  let r = await api("RegisterUsers")({ AppId: appId, Users: [{ UserId: 20001, NickName: "小红", Tags: ["level:gold"] }] });
  assert.deepEqual(r.Result, { FailedInfos: [] });
  // The seed's body, as the seed shows it.
  r = await api("BatchUpdateUserTags")({ AppId: appId, InboxType: 0, UserTags: [{ UserId: 20001, Tags: { key: "value" } }], Op: 0 });
  assert.deepEqual(r.Result, { FailedInfos: [] });
  assert.equal(r.ResponseMetadata.Action, "BatchUpdateUserTags");
  r = await api("BatchUpdateUserTags")({ AppId: appId, UserTags: [{ UserId: 20002, Tags: { a: "b" } }] });
  assert.equal(r.Result.FailedInfos[0].Code, "UserNotFound");
  r = await api("BatchGetUser")({ AppId: appId, UserIds: [20001] });
  assert.deepEqual(r.Result.Users[0].Tags, ["key:value", "level:gold"]);
  assert.equal(r.Result.Users[0].NickName, "小红");

  // A wrong secret: the SDK reports the server's error envelope.
  const bad = service("not-the-secret");
  let code;
  try {
    const res = await bad.createJSONAPI("BatchGetUser")({ AppId: appId, UserIds: [20001] });
    code = res.ResponseMetadata && res.ResponseMetadata.Error && res.ResponseMetadata.Error.Code;
  } catch (e) {
    const data = e.response ? e.response.data : e.data;
    code = data && data.ResponseMetadata && data.ResponseMetadata.Error.Code;
  }
  assert.equal(code, "SignatureDoesNotMatch");
  console.log("node_compat: OK");
}

main().catch((e) => {
  console.error("node_compat: FAILED:", e && e.stack ? e.stack : e);
  process.exit(1);
});
