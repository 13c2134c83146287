// Signs and sends API calls from the browser, exactly as the official SDKs sign
// (API.md §2, Volcengine signature V4): WebCrypto SHA-256 and HMAC-SHA256, the Python
// SDK's signed headers (content-type;host;x-content-sha256;x-date). The secret stays in
// this module's closure: it is never sent, stored, logged or put in a URL.

const VERSION = "2020-12-01";
const SERVICE = "rtc";
const enc = new TextEncoder();

const hex = (buf) =>
  Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");

async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

async function hmac(keyBytes, text) {
  const key = await crypto.subtle.importKey(
    "raw",
    keyBytes,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(text)));
}

// RFC 3986: encodeURIComponent leaves !'()* alone; the signature escapes them.
const rfc3986 = (s) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());

function xDate(now) {
  return now.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

/** An API error: the envelope's Code, CodeN and Message (or a network failure). */
export class ApiError extends Error {
  constructor(code, codeN, message, status, requestId) {
    super(message);
    this.code = code;
    this.codeN = codeN;
    this.status = status;
    this.requestId = requestId;
  }
  toString() {
    return `${this.code}${this.codeN ? " (" + this.codeN + ")" : ""}: ${this.message}`;
  }
}

/**
 * A signed client for one key pair. `call(action, body)` resolves to the envelope's
 * `Result`, or rejects with an ApiError carrying the API's Code and Message.
 */
export function client(accessKey, secretKey, region) {
  let secret = enc.encode(secretKey);
  const signed = "content-type;host;x-content-sha256;x-date";

  async function call(action, body = {}, { signal } = {}) {
    if (!secret) throw new ApiError("SignedOut", 0, "signed out", 0, "");
    if (!globalThis.crypto || !crypto.subtle) {
      // Browsers give WebCrypto only to secure contexts: https, or http on localhost.
      throw new ApiError("InsecureContext", 0,
        "this browser signs only on https or http://localhost: open the console through the TLS proxy of the API", 0, "");
    }
    const text = JSON.stringify(body);
    const bodyHash = await sha256Hex(enc.encode(text));
    const date = xDate(new Date());
    const day = date.slice(0, 8);
    const host = location.host;
    const query = `Action=${rfc3986(action)}&Version=${rfc3986(VERSION)}`;
    const headers =
      `content-type:application/json\nhost:${host}\n` +
      `x-content-sha256:${bodyHash}\nx-date:${date}\n`;
    const canonical = `POST\n/\n${query}\n${headers}\n${signed}\n${bodyHash}`;
    const scope = `${day}/${region}/${SERVICE}/request`;
    const toSign = `HMAC-SHA256\n${date}\n${scope}\n${await sha256Hex(enc.encode(canonical))}`;
    let key = secret;
    for (const part of [day, region, SERVICE, "request"]) key = await hmac(key, part);
    const signature = hex(await hmac(key, toSign));
    let response;
    try {
      response = await fetch(`/?${query}`, {
        method: "POST",
        body: text,
        signal,
        cache: "no-store",
        credentials: "omit",
        headers: {
          "Content-Type": "application/json",
          "X-Date": date,
          "X-Content-Sha256": bodyHash,
          Authorization:
            `HMAC-SHA256 Credential=${accessKey}/${scope}, ` +
            `SignedHeaders=${signed}, Signature=${signature}`,
        },
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError("NetworkError", 0, "the server cannot be reached; retrying when you act again", 0, "");
    }
    let envelope;
    try {
      envelope = await response.json();
    } catch {
      throw new ApiError("BadAnswer", 0, `HTTP ${response.status} without the API's envelope`, response.status, "");
    }
    const meta = envelope.ResponseMetadata || {};
    if (meta.Error) {
      throw new ApiError(meta.Error.Code, meta.Error.CodeN, meta.Error.Message, response.status, meta.RequestId);
    }
    return envelope.Result;
  }

  return {
    accessKey,
    region,
    call,
    /** Forgets the secret: every later call is refused in the page. */
    forget() {
      secret.fill(0);
      secret = null;
    },
  };
}
