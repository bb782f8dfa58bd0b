"""``ltemlive keys``: create, list and revoke the CURVE keys of a deployment (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ltemlive.wire.security import ROLES, Keyring, SecurityError

DEFAULT_DIR = Path("keys")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "keys",
        help="create, list and revoke the CURVE keys that let processes and people in (docs/security.md)",
        description="Manage a keyring folder: NAME.key (public, with its role) and NAME.key_secret (secret, "
        "mode 0600). Every process of a session that binds beyond loopback uses its own key (instrument, "
        "controller, publisher, each reconstructor's worker name) and lets in only the keys in the folder. "
        "Copy the public .key files to every host; each secret file only to the host that is that key.",
    )
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the keyring folder (default ./keys)")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ksub.add_parser("create", help="make a key pair with a role")
    c.add_argument("name", help="instrument, controller, publisher, a worker name, or a person")
    c.add_argument("--role", required=True, choices=ROLES,
                   help="acquisition (the controller), reconstructor, operator (commands), monitor (read only), "
                   "server (instrument, publisher)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing key of that name")
    ksub.add_parser("list", help="the keys in the folder, with their roles")
    lg = ksub.add_parser("login", help="issue a dashboard login token for a person's key (operator or monitor); "
                         "shown once, stored hashed in NAME.login, replaces any earlier one")
    lg.add_argument("name")
    r = ksub.add_parser("revoke", help="move a key to revoked/: refused from the next connection on")
    r.add_argument("name")
    d = ksub.add_parser("deployment", help="create the service's own keys at once (instrument, controller, "
                        "publisher, recon-1) and an operator and a monitor key")
    d.add_argument("--workers", type=int, default=1, help="reconstructor keys recon-1..N (default 1)")


def run(args: argparse.Namespace, console) -> int:
    ring = Keyring(args.dir)
    try:
        if args.keys_command == "create":
            key = ring.create(args.name, args.role, overwrite=args.overwrite)
            console.print(f"created {args.dir / (key.name + '.key')} ({key.role}) and its secret "
                          f"{args.dir / (key.name + '.key_secret')} (mode 0600)")
        elif args.keys_command == "list":
            keys = ring.keys()
            if not keys:
                console.print(f"no keys in {args.dir}")
            for key in keys:
                secret = (args.dir / f"{key.name}.key_secret").exists()
                login = "dashboard login" if ring.has_login(key.name) else ""
                console.print(f"{key.name:<20} {key.role:<14} {'secret here' if secret else 'public only':<12} "
                              f"{login}".rstrip())
        elif args.keys_command == "login":
            token = ring.issue_login(args.name)
            console.print(f"dashboard login for {args.name} ({ring.key(args.name).role}), shown once: {token}",
                          soft_wrap=True, highlight=False)
            console.print("give it to that person only; ltemlive keys revoke or a new login ends it", highlight=False)
        elif args.keys_command == "revoke":
            where = ring.revoke(args.name)
            console.print(f"revoked {args.name}: moved to {where.parent}/; new connections with it are refused")
        elif args.keys_command == "deployment":
            names = [("instrument", "server"), ("controller", "acquisition"), ("publisher", "server"),
                     *((f"recon-{i + 1}", "reconstructor") for i in range(args.workers)),
                     ("operator", "operator"), ("monitor", "monitor")]
            for name, role in names:
                ring.create(name, role)
            console.print(f"created {len(names)} keys in {args.dir}: {', '.join(n for n, _ in names)}")
            for name in ("operator", "monitor"):
                console.print(f"dashboard login for {name}, shown once: {ring.issue_login(name)}", soft_wrap=True,
                              highlight=False)
    except SecurityError as exc:
        raise ValueError(str(exc)) from None
    return 0
