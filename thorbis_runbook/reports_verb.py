"""The `reports` verb: verify the archive (an auditor's command: no runbook.toml needed with
--archive and --public-key), list its runs, make a signing key, render its pages again."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import archive, config, ledger, redaction, signing
from .display import text_table
from .endpoint import resolve
from .output import print_checks


def settings_for(args: argparse.Namespace) -> config.Settings | None:
    """The settings a reports action needs: none for keygen, nor for verify of an archive
    folder with a key given; verify --archive alone reads runbook.toml only where there is one
    (for its pinned key). Everything else, --against included, needs runbook.toml."""
    standalone = args.action == "keygen" or (
        args.action == "verify" and args.archive and not args.against
    )
    if standalone and (args.action == "keygen" or args.public_key):
        return None
    found = args.config or os.environ.get("THORBIS_CONFIG") or config.find_config(Path.cwd())
    if standalone and not found:
        return None
    settings = config.load_settings(Path(args.config) if args.config else None)
    redaction.gather(settings)
    return settings


def reports(args: argparse.Namespace, settings: config.Settings | None) -> int:
    if args.action == "keygen":
        return _keygen(Path(args.out))
    if args.action == "verify":
        return _verify(args, settings)
    assert settings is not None  # only keygen and verify go without
    if args.action == "render":
        print(f"rendered {archive.write_pages(settings)} and every change page from the ledger")
        return 0
    entries = ledger.run_entries(ledger.reports_root(settings))
    rows = [(e.get("finished"), e.get("target"), e.get("runbook"), e.get("status"), e.get("operator"), e.get("run_id"))
            for e in reversed(entries)]  # fmt: skip
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
    else:
        print(text_table(("finished", "target", "runbook", "status", "operator", "run_id"), rows))
    return 0


def _verify(args: argparse.Namespace, settings: config.Settings | None) -> int:
    if args.archive:
        root = Path(args.archive).expanduser().resolve()
    else:
        assert settings is not None
        root = ledger.reports_root(settings)
    public_key = signing.load_public_key(settings, args.public_key)
    against = resolve(settings, args.against) if settings and args.against else None
    report = archive.verify_archive(root, public_key=public_key, against=against)
    return print_checks(report, as_json=args.json)


def _keygen(out: Path) -> int:
    key = signing.generate_key(out)
    print(f"wrote a new Ed25519 signing key to {out} (mode 0600; key {key.key_id})")
    print("pin its public key: add these lines to runbook.toml")
    print(f"\n[reports]\n{key.line}\nsigning_key_file = {json.dumps(str(out.resolve()))}\n")
    print(
        f"(or give the key in {signing.KEY_ENV} instead of signing_key_file). Keep the private "
        "key out of git and out of reports/; an auditor needs only the public_key line."
    )
    return 0
