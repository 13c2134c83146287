"""Verifies webhook deliveries with the `standardwebhooks` package (standardwebhooks.com),
as a receiver in Python would: argv[1] is a JSON file of
[{"secret": ..., "requests": [{"headers": {...}, "body": "..."}]}]. A `whsec_` secret is
given to the package as is (it decodes it); any other secret as its bytes. Every request
must verify; the same request with one byte of its body changed must not. Prints
"verified N, refused M"."""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

verified = refused = 0
for case in json.load(open(sys.argv[1], encoding="utf-8")):
    secret = case["secret"]
    hook = Webhook(secret if secret.startswith("whsec_") else secret.encode())
    for r in case["requests"]:
        body = r["body"].encode()
        hook.verify(body, r["headers"])
        verified += 1
        try:
            hook.verify(body[:-1] + b" ", r["headers"])
        except WebhookVerificationError:
            refused += 1
print(f"verified {verified}, refused {refused}")
