#!/usr/bin/env python3
"""Print an access token from the development issuer (deploy/issuer/issuer.js), for curl:

    curl -H "Authorization: Bearer $(scripts/access_token.py 42)" ...     user 42
    scripts/access_token.py 42 --topup                                    user 42, with scope shop:topup
    scripts/access_token.py --admin                                       the operator client, with scope shop:admin

AUTH_ISSUER and DEV_ISSUER_SECRET come from the environment, else from the repository's .env. Standard library
only, so that it runs before any virtualenv exists."""
import argparse
import base64
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.runtime.config import read_env_file  # standard library only, as this script must be

DEFAULT_ISSUER = "http://localhost:8083"  # deploy/issuer/issuer.js's default
USER_ID = re.compile(r"[1-9][0-9]{0,14}")  # the issuer's user-<N> clients
TIMEOUT = 10


class Refused(Exception):
    """A one-line reason the token could not be had."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Print an access token from the development issuer.")
    parser.add_argument("user_id", nargs="?", help="the user id N (client user-N)")
    parser.add_argument("--topup", action="store_true", help="ask for scope shop:topup (user tokens only)")
    parser.add_argument("--admin", action="store_true", help="the operator client shop-admin, scope shop:admin")
    args = parser.parse_args(argv)
    if args.admin == (args.user_id is not None):
        parser.error("give a user id or --admin")
    if args.admin and args.topup:
        parser.error("--topup is for user tokens")
    if args.user_id is not None and not USER_ID.fullmatch(args.user_id):
        parser.error(f"user id must be a positive integer of at most 15 digits, not {args.user_id!r}")
    return args


def fetch_json(url, issuer, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            body = json.load(error)
        except ValueError:
            body = {}
        if body.get("error") == "invalid_client":
            raise Refused(f"{issuer} refused the client (invalid_client): wrong DEV_ISSUER_SECRET?") from None
        reason = f"{body['error']}: {body.get('error_description', '')}" if "error" in body else error.reason
        raise Refused(f"{url} answered {error.code} ({reason})") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Refused(f"dev issuer {issuer} unreachable ({reason}); "
                      "start it with ./run.sh or node deploy/issuer/issuer.js") from None
    except ValueError:
        raise Refused(f"{url} did not answer JSON: is {issuer} the dev issuer?") from None


def token(issuer, secret, client_id, scope):
    discovery = fetch_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration", issuer)
    # client_secret_basic: both halves form-encoded before base64, as RFC 6749 section 2.3.1 says.
    credentials = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
    form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    answer = fetch_json(discovery["token_endpoint"], issuer, data=urllib.parse.urlencode(form).encode(), headers={
        "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    })
    return answer["access_token"]


def main(argv):
    args = parse_args(argv)
    env = {**read_env_file(), **os.environ}
    issuer = env.get("AUTH_ISSUER") or DEFAULT_ISSUER
    secret = env.get("DEV_ISSUER_SECRET")
    if not secret:
        print("access_token.py: DEV_ISSUER_SECRET is not set (environment or .env)", file=sys.stderr)
        return 1
    if args.admin:
        client_id, scope = "shop-admin", "shop:admin"
    else:
        client_id, scope = f"user-{args.user_id}", "shop:topup" if args.topup else None
    try:
        print(token(issuer, secret, client_id, scope))
    except Refused as error:
        print(f"access_token.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
