"""``python -m export``: keys and signed model bundles.

Subcommands: ``keygen`` (Ed25519 key pair), ``bundle`` (run directory → signed int8 bundle with
accelerator variants), ``sign`` (re-sign a bundle after a hand edit, optionally as a new
release), ``verify`` (check a bundle as a gateway would).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import EXIT_INPUT_ERROR, EdgeAnomalyError
from export.errors import ExportError
from trainer.quiet import desk_logging, desk_parser, quiet_unless


def _parser() -> argparse.ArgumentParser:
    p = desk_parser("export", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="write KEYDIR/signing.key (0600) and KEYDIR/signing.pub")
    k.add_argument("--out", type=Path, required=True, help="directory for the key pair")
    b = sub.add_parser(
        "bundle",
        help="quantize a run to int8 and pack a signed bundle",
        description="Quantize to full-integer int8, check int8-vs-float parity, "
        "build accelerator variants, and sign the manifest.",
    )
    b.add_argument("--run", type=Path, required=True, help="run directory from `trainer fit`")
    b.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    b.add_argument("--key", type=Path, required=True, help="Ed25519 private key (signing.key)")
    b.add_argument("--model-version", help="version string (default: UTC time + hash)")
    b.add_argument(
        "--variants",
        default="edgetpu,onnx",
        help="comma-separated accelerator variants, or 'none' (default edgetpu,onnx)",
    )
    b.add_argument(
        "--force",
        action="store_true",
        help="export even if the int8 model fails the parity gate (recorded)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing bundle dir")
    g = sub.add_parser(
        "sign",
        help="re-hash a bundle's files and sign its manifest (after editing it by hand)",
        description="Validate manifest.json, recompute the SHA-256 of every file it lists, "
        "optionally stamp a new release, and write manifest.json and manifest.sig.",
    )
    g.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    g.add_argument("--key", type=Path, required=True, help="Ed25519 private key (signing.key)")
    g.add_argument(
        "--new-release",
        action="store_true",
        help="stamp created_at now (strictly later than before): gateways only take a release "
        "newer than the one they run",
    )
    g.add_argument("--model-version", help="set the manifest's model_version")
    v = sub.add_parser("verify", help="verify a bundle's signature and file hashes")
    v.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    v.add_argument("--trust", type=Path, required=True, help="trusted public key (signing.pub)")
    from export.ota_cli import add_parsers as add_ota_parsers

    add_ota_parsers(sub)  # publish, fleet: over-the-air updates through the fleet's broker
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    desk_logging(args.verbose)
    with quiet_unless(args.verbose):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "keygen":
            from export.keys import keygen

            priv, pub = keygen(args.out)
            print(f"private key {priv} (keep it on the desk), public key {pub} (for gateways)")
        elif args.command == "bundle":
            from export.bundle import build_bundle

            variants = (
                ()
                if args.variants == "none"
                else tuple(v.strip() for v in args.variants.split(",") if v.strip())
            )
            m = build_bundle(
                args.run,
                args.out,
                args.key,
                model_version=args.model_version,
                variants=variants,
                force=args.force,
                overwrite=args.overwrite,
            )
            p = m.parity
            print(
                f"bundle {m.model_version} -> {args.out}\n"
                f"parity on {p.windows} windows: F1 float {p.f1_float:.3f} int8 "
                f"{p.f1_int8:.3f}; AUC float {p.auc_float:.4f} int8 {p.auc_int8:.4f}"
            )
        elif args.command == "sign":
            from export.sign import manifest_bytes, sign_manifest

            m = sign_manifest(
                args.bundle,
                args.key,
                new_release=args.new_release,
                model_version=args.model_version,
            )
            digest = hashlib.sha256(manifest_bytes(m)).hexdigest()
            print(
                f"signed {args.bundle}: model_version {m.model_version}, created_at "
                f"{m.created_at}, {len(m.files)} files hashed; manifest sha256 {digest}"
            )
        elif args.command == "verify":
            from edge_agent.bundle.verify import verify_bundle

            b = verify_bundle(args.bundle, args.trust)
            print(f"ok: {b.manifest.model_version}, {len(b.files)} files verified")
        elif args.command in ("publish", "fleet"):
            from export.ota_cli import run_fleet, run_publish

            return run_publish(args) if args.command == "publish" else run_fleet(args)
        return 0
    except (EdgeAnomalyError, ExportError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
