"""A real SMTP server on the loopback interface for the email sink's tests (aiosmtpd).

Each message it accepts is written to DIR as <n>.eml (the message as received) with
<n>.json beside it (envelope sender, recipients, the authenticated user). Files appear whole:
each is written under a temporary name, then renamed. Once listening it prints
`ready <port>` on stdout (with --port 0 the system picks the port).

    $(scripts/smtp/venv) scripts/smtp/server.py --port 0 --dir /tmp/mail \
        [--fail-code 451 --fail-count 1] [--auth user:password]

--fail-code/--fail-count answer DATA with that SMTP code for the first N messages (4xx is
transient, 5xx permanent), so a test sees a retry and then a delivery. --auth requires
AUTH PLAIN/LOGIN with those credentials (plaintext is allowed: it is loopback only).
It runs until killed.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, directory, fail_code, fail_count):
        self.directory = directory
        self.fail_code = fail_code
        self.failures_left = fail_count
        self.received = 0

    async def handle_DATA(self, server, session, envelope):
        if self.failures_left > 0:
            self.failures_left -= 1
            return f"{self.fail_code} refused by the test server as asked"
        self.received += 1
        base = os.path.join(self.directory, str(self.received))
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "user": session.auth_data.login.decode() if session.authenticated else None,
        }
        write(base + ".json", json.dumps(meta).encode())
        write(base + ".eml", envelope.original_content or envelope.content)
        return "250 OK"


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


async def main():
    # Plaintext AUTH is the point on loopback; aiosmtpd warns about it (and about its own
    # deprecated login_data) on stderr, which would only clutter the test output.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--fail-code", type=int, default=451)
    parser.add_argument("--fail-count", type=int, default=0)
    parser.add_argument("--auth", help="user:password the client must log in with")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    handler = Handler(args.dir, args.fail_code, args.fail_count)
    options = {}
    if args.auth:
        user, _, password = args.auth.partition(":")
        options = dict(
            authenticator=Authenticator(user, password),
            auth_required=True,
            auth_require_tls=False,
        )

    # A fixed hostname: the default looks up the machine's FQDN, which can stall.
    def factory():
        return SMTP(handler, hostname="localhost", enable_SMTPUTF8=True, **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host="127.0.0.1", port=args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
